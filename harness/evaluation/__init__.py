"""Stage 5, evaluate: lm-eval on any model folder, with the project's task catalog and local data.

    evaluate.py      evaluate_model: task staging, lm-eval runs, per-sample files, the evaluation cache
    task_catalog.py  task names, categories, metrics, few-shot settings, groups, document caps
    offline_data.py  local benchmark files converted to what the task definitions read
"""
