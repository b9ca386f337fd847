"""The kernel benchmark runs end to end (small sizes) and writes its figures."""

from __future__ import annotations

import json

from sdk import bench


def test_kernel_bench_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    assert bench.main(["kernels", "--quick", "--repeat", "1", "--pause", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {(r["op"], r["q"]) for r in result["rows"]} == {
        (op, q) for op in ("top-1", "match") for q, _ in bench.QUICK_SIZES
    }
    for row in result["rows"]:
        assert row["top1_agreement_with_numpy"] == 1.0
        assert row["ours_ms"] > 0 and row["numpy_ms"] > 0
    printed = capsys.readouterr().out
    assert "vs best" in printed and f"isa={result['isa']}" in printed
