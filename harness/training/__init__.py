"""Stage 4, train: the fusion dataset (signals -> each method's per-example teachers), one accelerate loop
that never knows which method runs, and LoRA adapters through peft.

    dataset.py  the fuse step: a method's `combine` over the signal sets, batches of target tokens + teachers
    loop.py     the shared training loop (CPU, GPU, FSDP, DeepSpeed ZeRO), resumable checkpoints
    lora.py     LoRA wrapping and merging
"""
