"""One process of a multi-process API call (`num_processes` > 1 in harness/api.py).

`accelerate launch` starts `python -m harness.launch CALL` in every process; each runs the same api function with
the same arguments (read from CALL, which the caller wrote), the stages share the work through
harness/distributed.py, and the main process writes the function's return value where the caller reads it.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from harness import api, distributed
from harness.errors import HarnessError


def main(call_file: str) -> None:
    call = pickle.loads(Path(call_file).read_bytes())
    try:
        result = getattr(api, call["function"])(**call["kwargs"])
    except HarnessError as exc:  # one line, as the CLI prints it
        print(exc.one_line(), file=sys.stderr)
        sys.exit(exc.exit_code)
    if distributed.is_main():
        Path(call["result"]).write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
