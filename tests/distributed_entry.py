"""What torchrun starts in tests/test_distributed.py (not a test module itself).

`distributed_entry.py encdec ARGS...` runs the encdec command line, each process first noting
every checkpoint it writes in writes-rank<RANK>.txt in $ENCDEC_TEST_WRITES.
`distributed_entry.py diverge` checks that replicas with different weights are caught.
"""

import os
import sys
from pathlib import Path

import torch
from torch import nn

from encdec import training
from encdec.cli import main
from encdec.distributed import check_replicas_agree, job
from encdec.errors import EncdecError


def noting_writes(real_save):
    def save(state: dict, path: Path) -> None:
        notes = Path(os.environ["ENCDEC_TEST_WRITES"]) / f"writes-rank{os.environ['RANK']}.txt"
        with notes.open("a", encoding="utf-8") as file:
            file.write(Path(path).name + "\n")
        real_save(state, path)

    return save


def diverge() -> None:
    """Each rank writes what it saw to diverge-rank<RANK>.txt (stdout would interleave them)."""
    with job("cpu") as processes:
        report = Path(os.environ["ENCDEC_TEST_WRITES"]) / f"diverge-rank{processes.rank}.txt"
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        lines = [f"agree: {check_replicas_agree(model, processes, 'start')}"]
        if processes.rank == 1:
            with torch.no_grad():
                model.bias[0] = torch.nextafter(model.bias[0], torch.tensor(1.0))  # one ulp
        try:
            check_replicas_agree(model, processes, "after the nudge")
        except EncdecError as error:
            lines.append(f"error: {error}")
        report.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1] == "diverge":
        diverge()
    else:
        training.save_checkpoint = noting_writes(training.save_checkpoint)
        sys.exit(main(sys.argv[2:]))
