"""Data-parallel stage runs: ``torchrun`` with one clear line when a process fails.

``python -m pipeline.launch --standalone --nproc_per_node 4 -m stages.train --method ista_net ...``
takes torchrun's own arguments and runs it (torch.distributed.run). When a process exits with an
error, that process has already printed its one-line message (the stage's error boundary,
:func:`pipeline.cli.run_stage`); this launcher then ends with one more line naming the failed rank
and its exit code, instead of torch's ChildFailedError traceback, and exits with that code.
"""
from __future__ import annotations

import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

PROG = "python -m pipeline.launch"


def main(argv: list[str] | None = None) -> None:
    args = torchrun.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
        print(f"{PROG}: error: {len(exc.failures)} of {args.nproc_per_node} process(es) failed; the first was rank "
              f"{rank} with exit code {failure.exitcode} (its message is above)", file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; a training stage resumes from its checkpoint when rerun", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
