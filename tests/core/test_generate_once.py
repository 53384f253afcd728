"""`omnimask.data.generate_once`: default data appears whole or not at all, and is written once,
even when several processes start at the same time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omnimask.data import generate_once

RACE = """
import sys, time
from pathlib import Path
from omnimask.data import generate_once

def write(folder: Path) -> None:
    with open(Path(sys.argv[1]).parent / "writers.log", "a") as log:
        log.write(sys.argv[2] + "\\n")
    for index in range(50):
        (folder / f"part{index}.txt").write_text(sys.argv[2])
        time.sleep(0.002)

generate_once(Path(sys.argv[1]), write)
print(len(list(Path(sys.argv[1]).iterdir())))
"""


def test_concurrent_generators_leave_one_whole_copy(tmp_path: Path) -> None:
    final = tmp_path / "data-v1"
    racers = [
        subprocess.Popen([sys.executable, "-c", RACE, str(final), str(i)], stdout=subprocess.PIPE)
        for i in range(3)
    ]
    seen = [int(racer.communicate()[0]) for racer in racers]
    assert seen == [50, 50, 50]  # every process saw the whole set
    assert len({(final / f"part{i}.txt").read_text() for i in range(50)}) == 1  # one writer's
    assert len((tmp_path / "writers.log").read_text().split()) == 1  # the others waited
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".data-v1.lock", "data-v1", "writers.log"]  # no staging folder left


def test_a_failed_generation_leaves_nothing_and_a_later_one_writes(tmp_path: Path) -> None:
    final = tmp_path / "data-v1"

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        generate_once(final, broken)
    assert [p.name for p in tmp_path.iterdir()] in ([], [".data-v1.lock"])  # no data, no staging
    calls = []
    generate_once(final, lambda folder: calls.append((folder / "x").write_text("x")))
    generate_once(final, lambda folder: calls.append("again"))
    assert len(calls) == 1 and (final / "x").read_text() == "x"
