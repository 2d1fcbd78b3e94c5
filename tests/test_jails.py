"""Jails as Firecracker's jailer lays them out: a uid a VM, one read-only agent for them all.

Each VM's segment is at ``<root>/srv/jailer/firecracker/<id>/root/run/pmem.seg``,
made by its VMM running as the jail's own uid, mode 0640, its group the
agent's: for ``vm-1`` through a setgid ``run`` directory of that group, for
``vm-2`` by a VMM whose gid is that group.  The agent runs as a third uid, a
member of that group only, and reads them all, each labelled by its ``{vm}``,
without being able to write one or to open its lock file.  Root makes the
directories and switches users (a forked child per VMM and for the agent's
probe; the agent's exporter drops to its uid after its imports).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pmem_metrics import open_segment
from pmem_metrics.exposition import render

from .test_export import Exporter, becoming, scrape

VM_UIDS = {"vm-1": 60001, "vm-2": 60002}
"""Each jail's uid (its own group too: 60001, 60002)."""

AGENT_UID = 60003
AGENT_GROUP = 60100
"""The group the agent is in, and every segment belongs to."""

DEVICES = {"vm-1": {"drv0": 3, "drv1": 4}, "vm-2": {"drv0": 11}}
"""Each VM's devices and their cfg_fails."""


def as_user(uid: int, gid: int, groups: list[int], run: Callable[[], Any]) -> Any:
    """What *run* returns (JSON), run in a forked child that is *uid*, *gid* and *groups* only."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, run, say what came, and go
        status = 1
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            out = json.dumps({"ok": run()})
            status = 0
        except BaseException:
            out = json.dumps({"error": traceback.format_exc()})
        finally:
            os.write(w, out.encode())  # a few KiB: a pipe takes it whole
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = json.loads(f.read())
    os.waitpid(pid, 0)
    assert "ok" in got, got["error"]
    return got["ok"]


def _can_switch_users() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    try:
        return as_user(AGENT_UID, AGENT_UID, [AGENT_GROUP], os.getuid) == AGENT_UID
    except (OSError, AssertionError):
        return False


pytestmark = pytest.mark.skipif(
    not _can_switch_users(), reason="needs root that can become other users (setuid, setgroups)"
)


@pytest.fixture
def host() -> Iterator[Path]:
    """``<root>/srv/jailer/firecracker/<id>/root/run`` for each VM, as root makes them."""
    root = Path(tempfile.mkdtemp(prefix="pmem-jails-"))  # pytest's own is root's alone
    try:
        root.chmod(0o755)
        for vm, uid in VM_UIDS.items():
            run = root / "srv" / "jailer" / "firecracker" / vm / "root" / "run"
            run.mkdir(parents=True, mode=0o755)
            for d in (run.parent, run):  # the jail's: its group may look in, others nothing
                os.chown(d, uid, AGENT_GROUP)
                d.chmod(0o750)
            if vm == "vm-1":
                run.chmod(0o2750)  # setgid: what is made in it is the agent group's
        yield root
    finally:
        shutil.rmtree(root)


def seg_of(root: Path, vm: str) -> str:
    return str(root / "srv" / "jailer" / "firecracker" / vm / "root" / "run" / "pmem.seg")


def start_vms(root: Path) -> None:
    """Each VMM, as its jail's uid, makes its segment 0640 and counts its devices."""
    for vm, uid in VM_UIDS.items():
        gid = uid if vm == "vm-1" else AGENT_GROUP  # vm-1: the setgid directory gives the group

        def vmm(vm: str = vm) -> None:
            seg = open_segment(seg_of(root, vm), capacity=16, mode=0o640)
            for drive_id, n in DEVICES[vm].items():
                seg.alloc(drive_id).cfg_fails.add(n)

        as_user(uid, gid, [], vmm)
        st = os.stat(seg_of(root, vm))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, AGENT_GROUP, 0o640)
        lock = os.stat(seg_of(root, vm) + ".lock")
        assert (lock.st_uid, lock.st_mode & 0o7777) == (uid, 0o600)


def errno_of(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as e:
        return e.errno or -1
    return 0


def test_a_read_only_agent_in_the_jails_group_reads_every_vm_and_can_write_none(
    host: Path,
) -> None:
    start_vms(host)
    pattern = str(host / "srv" / "jailer" / "firecracker" / "{vm}" / "root" / "run" / "pmem.seg")

    def agent() -> dict[str, Any]:
        paths = [seg_of(host, vm) for vm in VM_UIDS]
        reader = open_segment(paths[0], readonly=True, create=False)
        return {
            "page": render(patterns=[pattern]).decode(),
            "open_rw": [errno_of(lambda p=p: open_segment(p, create=False)) for p in paths],
            "write": [errno_of(lambda p=p: os.close(os.open(p, os.O_RDWR))) for p in paths],
            "lock": [
                errno_of(lambda p=p: os.close(os.open(p + ".lock", os.O_RDONLY))) for p in paths
            ],
            "flush": errno_of(reader.flush_metrics),
        }

    seen = as_user(AGENT_UID, AGENT_UID, [AGENT_GROUP], agent)
    counts = {
        (s.labels["vm"], s.labels["segment"], s.labels["drive_id"]): s.value
        for family in text_string_to_metric_families(seen["page"])
        for s in family.samples
        if s.name == "pmem_cfg_fails_total"
    }
    assert counts == {
        (vm, seg_of(host, vm), drive_id): float(n)
        for vm, devices in DEVICES.items()
        for drive_id, n in devices.items()
    }
    assert all(e in (errno.EACCES, errno.EPERM) for e in seen["open_rw"]), seen["open_rw"]
    assert seen["write"] == [errno.EACCES] * 2  # the kernel's no, not only the library's
    assert seen["lock"] == [errno.EACCES] * 2  # readers never need it
    assert seen["flush"] == errno.EROFS  # opened read-only: it never moves a baseline
    for vm, devices in DEVICES.items():  # the agent reset nothing: the VMs' counts are whole
        flushed = open_segment(seg_of(host, vm), trust=True).flush_metrics()
        assert {d: flushed[f"pmem_{d}"]["cfg_fails"] for d in devices} == devices


def test_the_agents_exporter_serves_every_vm_and_skips_lines_it_cannot_write(host: Path) -> None:
    """``export --shm-glob`` as the agent: Prometheus reads every VM; lines, which flush,
    are refused each VM once, in one line that says why, and the exporter goes on."""
    start_vms(host)
    pattern = str(host / "srv" / "jailer" / "firecracker" / "{vm}" / "root" / "run" / "pmem.seg")
    lines = host / "lines.json"
    lines.touch()
    os.chown(lines, AGENT_UID, AGENT_UID)
    as_agent = [sys.executable, "-c", becoming(AGENT_UID, [AGENT_GROUP])]
    exporter = Exporter(host, "--shm-glob", pattern, "--prometheus-port", "0", "--interval",
                        "0.02", "--metrics-path", str(lines), prefix=as_agent)  # fmt: skip
    try:
        url = exporter.url()
        want = {
            (seg_of(host, vm), drive_id): float(n)
            for vm, devices in DEVICES.items()
            for drive_id, n in devices.items()
        }
        # The lines' fleet opens its segments read-write: refused, said once each (any order).
        said = {exporter.until(": [Errno 13]").split(": [Errno")[0] for _ in VM_UIDS}
        assert said == {f"pmem_metrics: skipping {seg_of(host, vm)}" for vm in VM_UIDS}
        for _ in range(10):  # beats go by meanwhile: each VM's refusal said once, not a beat
            assert scrape(url) == (want, {seg_of(host, vm): 1.0 for vm in VM_UIDS})
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err
    refused = [line for line in exporter.stderr if "skipping" in line]
    assert len(refused) == 2, exporter.stderr
    assert all("a writer needs write access" in line for line in refused), refused
    assert lines.read_text() == ""
    assert "Traceback" not in "".join(exporter.stderr)
