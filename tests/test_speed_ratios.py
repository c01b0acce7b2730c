"""``python -m benchmarks.speed.ratios``: target ratios over several saved suite runs."""

from __future__ import annotations

import json

from benchmarks.speed.ratios import main


def _run(path, library, floor, plain_lib, plain):
    def bench(comparison, role, size, seconds, toy="gaussian_quadratic"):
        return {
            "extra_info": {"toy": toy, "estimator": "reinforce", "comparison": comparison,
                           "role": role, "size": size},
            "stats": {"min": seconds},
        }  # fmt: skip

    benchmarks = [
        bench("batched / floor", "batched", "R=1000 N=1000", library),
        bench("batched / floor", "floor", "R=1000 N=1000", floor),
        bench("library / plain", "library", "N=10", plain_lib),
        bench("library / plain", "plain", "N=10", plain),
        bench("library / plain", "library", "N=1000", 1.0),  # no reference: not a pair
    ]
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return str(path)


def test_median_and_range_over_runs_decide_the_target(tmp_path, capsys):
    files = [
        _run(tmp_path / "a.json", 1.2, 1.0, 1.0, 1.0),
        _run(tmp_path / "b.json", 3.0, 1.0, 0.9, 1.0),  # one noisy run
        _run(tmp_path / "c.json", 1.4, 1.0, 1.3, 1.0),
    ]
    assert main(files) == 0
    lines = capsys.readouterr().out.splitlines()
    floor = next(line for line in lines if line.startswith("batched / floor"))
    assert "1.40" in floor and "1.20–3.00" in floor and "missed" not in floor
    plain = next(line for line in lines if line.startswith("library / plain"))
    assert "1.00" in plain and "0.90–1.30" in plain and "missed" not in plain
    assert len(lines) == 3  # header and the two pairs


def test_a_missed_target_is_marked(tmp_path, capsys):
    assert main([_run(tmp_path / "a.json", 2.0, 1.0, 1.5, 1.0)]) == 0
    out = capsys.readouterr().out
    assert out.count("(missed)") == 2


def test_unreadable_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(bad)]) == 2
    assert main([str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("ratios: cannot read") for line in err)


def test_interleaved_comparison_runs_both_sides():
    import torch

    from benchmarks.speed.interleaved import measure_pairs

    rows = measure_pairs(
        ["gaussian_quadratic", "bernoulli_threshold"], ["reinforce", "reparam"],
        samples=20, replicates=30, rounds=2, device=torch.device("cpu"),
    )  # fmt: skip
    # reparam has no floor on a Bernoulli toy: three pairs.
    assert [row[:2] for row in rows] == [
        ("gaussian_quadratic", "reinforce"),
        ("gaussian_quadratic", "reparam"),
        ("bernoulli_threshold", "reinforce"),
    ]
    for _, _, batched, floor, ratio in rows:
        assert batched > 0 and floor > 0 and ratio == batched / floor


def test_interleaved_prints_one_row_per_pair(capsys):
    from benchmarks.speed.interleaved import main as interleaved

    code = interleaved([
        "--toys", "gaussian_quadratic", "--estimators", "reinforce", "--samples", "20",
        "--replicates", "30", "--rounds", "1", "--threads", "1",
    ])  # fmt: skip
    assert code == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 1 and rows[0].split()[:2] == ["gaussian_quadratic", "reinforce"]
    batched, floor, ratio = (float(v) for v in rows[0].split()[2:5])
    assert batched >= 0 and floor >= 0 and ratio > 0


def test_interleaved_without_any_pair_is_an_error(capsys):
    from benchmarks.speed.interleaved import main as interleaved

    assert interleaved(["--toys", "bernoulli_threshold", "--estimators", "reparam"]) == 2
    assert "no toy/estimator pair" in capsys.readouterr().err
