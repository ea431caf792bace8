"""The results store: keys, atomic writes, stray temporary files, corrupt records, claims."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import store as store_mod
from experiments.store import CorruptRecordWarning, RecordKey, Store, default_root


def key(**config):
    return RecordKey("toy", {"width": 64, "seed": 0, **config}, "0.1.0+abc", "float64")


def test_digest_is_sha256_of_canonical_config():
    k = key()
    assert len(k.digest) == 64 and int(k.digest, 16) >= 0
    assert RecordKey("toy", {"seed": 0, "width": 64}, "0.1.0+abc", "float64").digest == k.digest  # key order
    assert key(widths=(1, 2)).digest == key(widths=[1, 2]).digest  # tuples are lists
    variants = {
        key(seed=1).digest,
        key(width=128).digest,
        RecordKey("toy2", dict(k.config), "0.1.0+abc", "float64").digest,
        RecordKey("toy", dict(k.config), "0.1.0+abd", "float64").digest,
        RecordKey("toy", dict(k.config), "0.1.0+abc", "float32").digest,
    }
    assert k.digest not in variants and len(variants) == 5
    assert hash(k) == hash(key())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("../x", {}, "v", "float64"), "experiment name"),
        (("toy", [1, 2], "v", "float64"), "mapping"),
        (("toy", {"a": object()}, "v", "float64"), "cannot store"),
        (("toy", {"a": float("nan")}, "v", "float64"), "canonical JSON"),
        (("toy", {}, "", "float64"), "code_version"),
        (("toy", {}, "v", None), "dtype"),
    ],
)
def test_bad_keys(args, match):
    with pytest.raises(ValueError, match=match):
        RecordKey(*args)


def test_put_get_roundtrip(tmp_path):
    store = Store(tmp_path / "results")
    k = key()
    assert store.get(k) is None and not store.has(k)
    rec = store.put(k, {"mean": np.float64(0.5), "curve": np.arange(3.0), "n": np.int64(3), "ok": True},
                    elapsed_s=1.25)
    assert store.has(k)
    got = store.get(k)
    assert got == rec
    assert got["values"] == {"mean": 0.5, "curve": [0.0, 1.0, 2.0], "n": 3, "ok": True}
    assert got["config"] == {"width": 64, "seed": 0}
    assert got["dtype"] == "float64" and got["code_version"] == "0.1.0+abc" and got["elapsed_s"] == 1.25
    assert got["experiment"] == "toy" and got["digest"] == k.digest and got["timestamp"].endswith("+00:00")
    assert store.path(k) == tmp_path / "results" / "toy" / f"{k.digest}.json"
    assert [p.name for p in store.path(k).parent.iterdir()] == [f"{k.digest}.json"]  # no temporary left


def test_nan_values_are_stored_but_not_objects(tmp_path):
    store = Store(tmp_path)
    store.put(key(), {"x": float("nan")})
    assert np.isnan(store.get(key())["values"]["x"])
    with pytest.raises(ValueError, match="cannot store"):
        store.put(key(seed=1), {"x": {1, 2}})
    with pytest.raises(ValueError, match="cannot store an array of dtype"):
        store.put(key(seed=1), {"x": np.array(["a"])})


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    """An exception (or kill) between the write and the rename leaves no record and no partial file."""
    store = Store(tmp_path)
    store.put(key(seed=1), {"x": 1})

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        store.put(key(), {"x": 2})
    monkeypatch.undo()
    assert store.get(key()) is None
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == [f"{key(seed=1).digest}.json"]


def test_killed_writer_never_leaves_a_half_record(tmp_path):
    """SIGKILL a process that is rewriting one record in a loop: what is on disk always parses."""
    code = (
        "import sys; from experiments.store import Store, RecordKey\n"
        "s = Store(sys.argv[1]); k = RecordKey('toy', {'seed': 0}, 'v', 'float64')\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    s.put(k, {'big': list(range(20000)), 'i': i}); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        k = RecordKey("toy", {"seed": 0}, "v", "float64")
        path = Store(tmp_path).path(k)
        for _ in range(200):  # until the writer has replaced the record a few times
            if path.exists() and json.loads(path.read_text())["values"]["i"] >= 3:
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    rec = Store(tmp_path).get(k)
    assert rec is not None and rec["values"]["big"][-1] == 19999
    Store(tmp_path).clean_temp_files()
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_stray_temp_files_are_ignored_and_cleaned(tmp_path):
    store = Store(tmp_path)
    store.put(key(), {"x": 1})
    folder = tmp_path / "toy"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = folder / f".{key(seed=5).digest}.{dead}.deadbeef.tmp"
    stale.write_text('{"half": ')
    live = folder / f".{key(seed=6).digest}.{os.getpid()}.cafe.tmp"
    live.write_text("{")
    assert [r["config"]["seed"] for r in store.records("toy")] == [0]
    assert store.clean_temp_files() == [stale]
    assert live.exists() and not stale.exists()


def test_corrupt_record_is_reported_moved_aside_and_missing(tmp_path):
    store = Store(tmp_path)
    store.put(key(), {"x": 1})
    store.put(key(seed=1), {"x": 2})
    path = store.path(key())
    path.write_text('{"config": {"width": 6')  # truncated by hand
    with pytest.warns(CorruptRecordWarning, match="corrupt record"):
        assert store.get(key()) is None
    assert not path.exists() and path.with_name(path.name + ".corrupt").exists()
    assert store.get(key()) is None  # now simply missing, no second warning needed
    other = store.path(key(seed=1))
    other.write_text(json.dumps({"config": {}, "values": {}, "digest": "0" * 64}))  # wrong digest
    with pytest.warns(CorruptRecordWarning, match="does not match"):
        assert store.records("toy") == []


def test_records_and_frame(tmp_path):
    store = Store(tmp_path)
    for seed in range(3):
        store.put(key(seed=seed), {"y": seed / 2, "curve": [seed, seed]})
    store.put(RecordKey("toy", {"width": 64, "seed": 0}, "0.1.0+new", "float64"), {"y": 9.0, "curve": []})
    assert len(store.records("toy")) == 4
    assert len(store.records("toy", code_version="0.1.0+abc")) == 3
    df = store.records("toy", code_version="0.1.0+abc", as_frame=True).sort_values("seed")
    assert list(df.columns[:4]) == ["seed", "width", "curve", "y"]  # config fields, values (each sorted), meta
    assert list(df["y"]) == [0.0, 0.5, 1.0] and df["curve"].iloc[2] == [2, 2]
    assert set(df["dtype"]) == {"float64"}
    assert store.experiments() == ["toy"]
    assert Store(tmp_path / "nothing").records("toy") == [] and Store(tmp_path / "nothing").experiments() == []


def test_value_clashing_with_config_is_an_error(tmp_path):
    store = Store(tmp_path)
    store.put(key(), {"width": 1})
    with pytest.raises(ValueError, match=r"'width'.*clashes"):
        store.records("toy", as_frame=True)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPLIMITS_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_root() == tmp_path / "results" and Store().root == tmp_path / "results"
    monkeypatch.setenv("DEEPLIMITS_RESULTS", str(tmp_path / "elsewhere"))
    assert Store().root == tmp_path / "elsewhere"
    assert Store(tmp_path / "given").root == tmp_path / "given"


def test_not_a_folder(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("I am a file")
    store = Store(blocker)
    with pytest.raises(NotADirectoryError, match="not writable"):
        store.ensure_writable("toy")
    with pytest.raises(OSError, match="results"):
        store.put(key(), {"x": 1})


def test_a_claim_excludes_other_claims_until_released(tmp_path):
    store = Store(tmp_path)
    first = store.claim(key())
    assert first is not None and store.claim_path(key()).exists()
    assert store.claim(key()) is None  # another claim, even in this process
    assert store.holder(key()) == f"pid {os.getpid()} on {os.uname().nodename}"
    other = store.claim(key(seed=1))  # other points are free
    assert other is not None
    store.release(first)
    store.release(other)
    assert not store.claim_path(key()).exists() and list((tmp_path / "toy").iterdir()) == []
    again = store.claim(key())
    assert again is not None
    store.release(again)
    assert store.holder(key()) == "another run"  # nobody: no file to read


def test_a_claim_dies_with_its_process(tmp_path):
    """The kernel drops a SIGKILLed holder's lock: its claim never blocks a point; the file left is cleaned."""
    code = (
        "import sys, time; from experiments.store import Store, RecordKey\n"
        "c = Store(sys.argv[1]).claim(RecordKey('toy', {'width': 64, 'seed': 0}, '0.1.0+abc', 'float64'))\n"
        "print('held' if c else 'refused', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        store = Store(tmp_path)
        assert store.claim(key()) is None
        assert store.holder(key()) == f"pid {proc.pid} on {os.uname().nodename}"
        assert store.clean_temp_files() == []  # a held claim is not removed
    finally:
        proc.kill()
        proc.communicate()
    assert store.claim_path(key()).exists()  # left behind by the killed holder ...
    assert store.clean_temp_files() == [store.claim_path(key())]  # ... and cleaned
    claim = store.claim(key())
    assert claim is not None
    store.release(claim)
