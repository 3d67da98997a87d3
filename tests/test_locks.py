"""One writer per output: ``symgrad.io.ExclusiveLock`` against a second process, and after a kill -9."""

import os
import signal
import subprocess
import sys

import pytest

from symgrad.errors import SymgradError
from symgrad.io import ExclusiveLock

HOLD = ("import sys, time\n"
        "from symgrad.io import ExclusiveLock\n"
        "lock = ExclusiveLock(sys.argv[1], 'the test output').__enter__()  # held until killed\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "out" / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SymgradError) as info:
            with ExclusiveLock(path, "the test output"):
                pass
        msg = str(info.value)
        assert f"process {holder.pid}" in msg and "in use" in msg and "\n" not in msg
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate()
    assert path.exists()  # the killed holder could not clean up; its lock died with it
    with ExclusiveLock(path, "the test output"):
        assert f"process {os.getpid()}" in path.read_text()
    assert not path.exists()  # a clean release removes the file
