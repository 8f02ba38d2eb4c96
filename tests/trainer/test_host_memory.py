"""The launcher's restart with glibc's huge-page tunable (trainer.host_memory)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trainer import host_memory


def _decide(environ, is_glibc=True, thp_available=True):
    return host_memory.tunables_with_huge_pages(environ, is_glibc=is_glibc,
                                                thp_available=thp_available)


def test_tunable_is_added_once_and_keeps_the_users_tunables():
    assert _decide({}) == "glibc.malloc.hugetlb=1"
    assert _decide({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # Already there (set by the user, or by the restart itself): no second restart.
    assert _decide({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert _decide({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) is None


def test_no_restart_where_it_cannot_help_or_is_refused():
    assert _decide({}, is_glibc=False) is None
    assert _decide({}, thp_available=False) is None
    assert _decide({"VITKD_HUGE_PAGES": "0"}) is None
    assert _decide({"VITKD_HUGE_PAGES": "1"}) == "glibc.malloc.hugetlb=1"


def test_transparent_huge_page_setting_is_read_from_the_kernel_file(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert host_memory._transparent_huge_pages_available(str(setting))
    setting.write_text("always madvise [never]\n")
    assert not host_memory._transparent_huge_pages_available(str(setting))
    assert not host_memory._transparent_huge_pages_available(str(tmp_path / "missing"))


@pytest.mark.skipif(
    host_memory.restart_tunables({}) is None,
    reason="needs Linux with glibc and transparent huge pages",
)
def test_restart_keeps_pid_and_arguments_and_sets_the_tunable(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        sys.path.insert(0, os.environ["REPO"])
        print("start", os.getpid(), flush=True)
        from trainer import host_memory
        host_memory.reexec_with_huge_pages()
        print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:],
                          "tunables": os.environ.get("GLIBC_TUNABLES")}))
    """))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VITKD_HUGE_PAGES")}
    env["REPO"] = repo
    out = subprocess.run([sys.executable, str(script), "--flag=1", "x y"], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    starts = [line for line in out.splitlines() if line.startswith("start")]
    result = json.loads(out.splitlines()[-1])
    assert len(starts) == 2  # started twice: the restart happened, once
    assert {int(line.split()[1]) for line in starts} == {result["pid"]}
    assert result["argv"] == ["--flag=1", "x y"]
    assert result["tunables"] == "glibc.malloc.hugetlb=1"
    env["VITKD_HUGE_PAGES"] = "0"
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert json.loads(out.splitlines()[-1])["tunables"] is None
