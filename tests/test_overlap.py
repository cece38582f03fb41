"""The per-image stages' read-ahead and write-behind (pipeline.data.overlap)."""
import threading

import numpy as np
import pytest

from pipeline.data.overlap import read_ahead, save_label, written_behind
from pipeline.errors import UserError
from pipeline.io import read_label


def test_read_ahead_loads_in_order_in_a_thread_and_only_depth_ahead():
    drawn, threads = [], set()

    def items():
        for i in range(6):
            drawn.append(i)
            yield i

    def load(i):
        threads.add(threading.current_thread().name)
        return i * i

    stream = read_ahead(items(), load, depth=2)
    assert next(stream) == (0, 0)
    assert drawn == [0, 1, 2]  # the first item and two ahead, not the whole split
    assert list(stream) == [(i, i * i) for i in range(1, 6)]
    assert threads and all(name.startswith("read-ahead") for name in threads)


def test_read_ahead_raises_a_load_error_at_its_item():
    def load(i):
        if i == 2:
            raise UserError(f"{i}.png: unreadable image")
        return i

    got = []
    with pytest.raises(UserError, match="2.png: unreadable image"):
        for item, _ in read_ahead(range(5), load):
            got.append(item)
    assert got == [0, 1]


def test_written_behind_writes_every_label_whole_before_the_block_ends(tmp_path):
    labels = [np.full((5, 7), i, np.uint8) for i in range(20)]
    with written_behind(depth=3) as write:
        for i, label in enumerate(labels):
            write(save_label, tmp_path / f"{i}.png", label)
    for i, label in enumerate(labels):
        np.testing.assert_array_equal(read_label(tmp_path / f"{i}.png"), label)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.png" for i in range(20))  # no temporary left


def test_written_behind_raises_a_failed_write_and_leaves_no_partial_file(tmp_path):
    def fail(path, label):
        raise OSError(f"{path}: disk full")

    with pytest.raises(OSError, match="b.png: disk full"):
        with written_behind() as write:
            write(save_label, tmp_path / "a.png", np.zeros((3, 3), np.uint8))
            write(fail, tmp_path / "b.png", None)
            write(save_label, tmp_path / "c.png", np.ones((3, 3), np.uint8))
    assert (tmp_path / "a.png").is_file() and not (tmp_path / "b.png").exists()


def test_a_failing_stage_body_still_finishes_the_writes_it_asked_for(tmp_path):
    with pytest.raises(RuntimeError, match="the net failed"):
        with written_behind() as write:
            write(save_label, tmp_path / "a.png", np.full((4, 4), 3, np.uint8))
            raise RuntimeError("the net failed")
    np.testing.assert_array_equal(read_label(tmp_path / "a.png"), np.full((4, 4), 3, np.uint8))
