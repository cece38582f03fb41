"""pipeline.allocator: a freed 64 MB tensor stays in the process's heap, unless the user tunes malloc."""
import json
import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.allocator import untuned_environment

# A child process (the setting lasts a process's lifetime): glibc's mallinfo2 before a 64 MB
# tensor, while it is alive and after it is freed: mmapped bytes, the heap's size and its bytes in use.
PROBE = """
import ctypes, json, torch
from pipeline.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
before = libc.mallinfo2()
x = torch.ones(16 * 2**20)  # 64 MB
alive = libc.mallinfo2()
del x
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, **{f"{name}_{when}": getattr(info, field) - getattr(before, field)
                  for when, info in (("alive", alive), ("freed", freed))
                  for name, field in (("mmapped", "hblkhd"), ("heap", "arena"), ("in_use", "uordblks"))}}))
"""
MB = 2**20


def probe(**env) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**untuned_environment(), **env}, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def test_a_large_block_comes_from_the_heap_and_stays_there_after_it_is_freed():
    kept = probe()
    assert kept["applied"]
    assert kept["mmapped_alive"] < MB  # not mmapped...
    assert kept["in_use_alive"] >= 64 * MB  # ...but in the heap
    assert kept["heap_freed"] == kept["heap_alive"] >= 64 * MB  # which is not trimmed when it is freed


def test_a_user_tuned_malloc_is_left_alone():
    default = probe(GLIBC_TUNABLES="glibc.malloc.mmap_max=65536")  # glibc's default, set by hand
    assert not default["applied"]
    assert default["mmapped_alive"] >= 64 * MB  # glibc's own way: the block is mmapped
    assert default["in_use_alive"] < MB
    assert default["mmapped_freed"] < MB  # and unmapped when it is freed
