"""The benchmark scripts run against the current estimator (on tiny problems)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    # As `python benchmarks/NAME.py` does: the scripts import their neighbours (suite_data).
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def table_cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")]


@pytest.fixture(scope="module")
def bench_sinkhorn():
    return load_script("bench_sinkhorn")


@pytest.mark.parametrize("cluster_sizes", ["equal", "estimated"])
def test_warm_start_on_real_logits_solves_the_estimators_problems(bench_sinkhorn, cluster_sizes):
    X = load_digits().data[:300]
    problems = bench_sinkhorn.consecutive_epoch_problems(X, 3, cluster_sizes)
    assert problems["before"].shape == problems["after"].shape == (8, 300, 10)
    assert not np.array_equal(problems["before"], problems["after"])
    for when in ("before", "after"):
        weights = problems[f"weights_{when}"]
        if cluster_sizes == "equal":
            assert weights is None
        else:
            assert weights.shape == (8, 10)
            np.testing.assert_allclose(weights.sum(axis=1), 1.0)

    runs = bench_sinkhorn.solve_epoch_pair(problems, head=0, max_iter=1000)
    assert all(run.converged for run in runs.values())
    # Cold and warm solve the same problem to the same tolerance.
    assert np.mean(runs["warm"].labels == runs["cold"].labels) > 0.99


def test_warm_start_row_reports_every_column(bench_sinkhorn):
    row = bench_sinkhorn.warm_real_row("digits", load_digits().data[:300], "estimated", 3, 1000)
    cells = table_cells(row)
    assert cells[:3] == ["digits", "estimated", "3"]
    assert len(cells) == 11 and all(cells)


def test_quality_job_runs_and_scores(tmp_path):
    quality = load_script("quality")
    job = dict(
        table="main",
        data="digits",
        method="selflabel",
        seed=0,
        image=True,  # the image path passes the set's shape, and has no layout start to build
        params={"max_epochs": 2},
    )
    row = quality.run_one(job, str(tmp_path))
    assert 0.0 <= row["acc"] <= 1.0 and row["fit_s"] > 0
    assert row["min_share"] > 0


def test_label_step_row_splits_the_solver_from_the_step():
    bench = load_script("bench_label_step")
    X, y = load_digits(return_X_y=True)
    # From the random split: steps run from the first epoch on.
    params = {"max_epochs": 12, "init": "random"}
    row = bench.label_step_row("digits", X[:300], y[:300], "random start", params, 0)
    cells = table_cells(row)
    assert len(cells) == 11 and cells[:2] == ["digits", "random start"]
    step_seconds, solver_seconds = float(cells[4]), float(cells[6])
    assert 0 < solver_seconds < step_seconds


def test_a_quality_run_of_some_sets_reports_every_set_on_record(tmp_path, monkeypatch):
    quality = load_script("quality")
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    records = [
        quality.run_one(quality.job("main", data, "KMeans", 0, False, {}), str(tmp_path))
        for data in ("wine", "iris")
    ]
    (tmp_path / "quality.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["quality.py", "--datasets", "iris", "--seeds", "1", "--report-only"]
    monkeypatch.setattr(sys, "argv", [*argv, "--data-dir", str(tmp_path)])
    quality.main()
    report = (tmp_path / "quality.md").read_text()
    assert "### wine" in report and "### iris" in report


def test_quality_jobs_cover_every_set_and_images_only_where_rows_are_images():
    quality = load_script("quality")
    planned = quality.jobs(list(quality.DATASETS), seeds=[0, 1], ablation_seeds=[0])
    for data, (_, _, is_image) in quality.DATASETS.items():
        methods = {j["method"] for j in planned if (j["table"], j["data"]) == ("main", data)}
        assert {"selflabel", "KMeans", "Spectral (kNN)", "GMM (PCA <= 50)"} <= methods
        assert ("selflabel_image" in methods) == is_image
    flat = {(j["data"], j["method"]) for j in planned if j["table"] == "flat_ablation"}
    assert flat == (
        {("usps", m) for m in ("as_table", "random_start", "layout_only")}
        | {("text", m) for m in ("as_table", "kind_only", "propagation")}
        | {
            (data, m)
            for data in ("wine", "breast_cancer", "iris")
            for m in ("random_start", "mixture_start")
        }
    )
    only_flat = quality.jobs(["usps"], seeds=[0], ablation_seeds=[0], ablations=("flat",))
    assert {j["table"] for j in only_flat} == {"main", "flat_ablation"}


def test_quality_baseline_on_a_table_with_fewer_features_than_pca_components(tmp_path):
    quality = load_script("quality")
    job = dict(table="main", data="iris", method="GMM (PCA <= 50)", seed=0, image=False, params={})
    row = quality.run_one(job, str(tmp_path))
    assert row["acc"] > 0.5 and row["min_share"] > 0


def test_bench_fit_child_imports_the_package_of_the_tree_it_is_given(tmp_path):
    bench_fit = load_script("bench_fit")
    # The image fit of digits: no layout start to build, so that the child is quick.
    spec = dict(config="digits-image", seed=0, threads=1, device="cpu", tiny=False)
    spec["data_dir"] = str(tmp_path)
    # A copy of the package elsewhere stands for another revision's checkout.
    shutil.copytree(bench_fit.ROOT / "sklearn_selflabel", tmp_path / "sklearn_selflabel")
    settings = (bench_fit.ROOT / "sklearn_selflabel" / "_settings.py").read_text()
    assert "_MIN_IMAGE_STEPS = 960\n" in settings
    (tmp_path / "sklearn_selflabel" / "_settings.py").write_text(
        settings.replace("_MIN_IMAGE_STEPS = 960\n", "_MIN_IMAGE_STEPS = 1\n")
    )
    quick = bench_fit.run_child(tmp_path, spec)
    assert 0 < quick["acc"] <= 1 and quick["seconds"] > 0


def test_code_size_counts_code_not_docstrings_comments_or_blanks():
    code_size = load_script("code_size")
    source = '''"""Module docstring."""


class SelfLabelingClusterer:
    """Docstring
    of two lines."""

    # a comment
    def fit(self, X):
        return (
            X
        )
'''
    assert sorted(code_size.code_lines(source)) == [4, 9, 10, 11, 12]
    assert code_size.class_size(source, "SelfLabelingClusterer") == (5, 2, 1)
    assert code_size.class_size(source, "KMeans") is None


def test_sparse_scale_data_are_unit_rows_of_the_asked_density(tmp_path):
    import scipy.sparse as sp

    bench_sparse = load_script("bench_sparse")
    bench_sparse.make_data(tmp_path, 2000, 5000, seed=0)
    X = sp.load_npz(tmp_path / "X.npz")
    y = np.load(tmp_path / "y.npy")
    assert X.shape == (2000, 5000) and X.dtype == np.float32 and y.shape == (2000,)
    assert 0.009 < X.nnz / (2000 * 5000) <= 0.01  # 50 terms a row, a few drawn twice
    np.testing.assert_allclose(sp.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    assert set(np.unique(y)) == set(range(bench_sparse.N_TOPICS))


def test_n_clusters_table_marks_the_estimate_and_counts_hits():
    n_clusters = load_script("n_clusters")
    X, y, shape = n_clusters.data("blobs12", Path("unused"))
    assert X.shape == (1500, 16) and len(np.unique(y)) == 12 and shape is None
    record = dict(
        data="iris", seed=0, n_samples=150, true_k=3, estimated_k=2,
        auto_acc=0.6, true_acc=0.9, auto_nmi=0.7, true_nmi=0.875,
        auto_seconds=1.2, true_seconds=1.0, hdbscan_k=2, hdbscan_nmi=0.5,
        curve=dict(min_cluster_size=[15, 30], n_clusters=[2, 1], selected=0),
    )  # fmt: skip
    exact = {**record, "data": "wine", "estimated_k": 3}
    table = n_clusters.table([record, exact])
    iris = next(line for line in table.splitlines() if line.startswith("| iris"))
    cells = table_cells(iris)
    assert cells[1] == "0" and cells[4] == "2" and cells[9] == "0.80" and cells[12] == "1.20"
    assert cells[-1] == "**2@15** 1@30"
    assert "Seed 0: exact K on 1 of 2 sets; within 25% on 1 of 2." in table
    another_seed = n_clusters.table([record, exact, {**exact, "seed": 1, "estimated_k": 4}])
    assert "Seed 1: exact K on 0 of 1 sets; within 25% on 0 of 1." in another_seed


def test_long_tailed_keeps_the_first_rows_of_each_class_by_an_imbalance_of_ten():
    suite_data = load_script("suite_data")
    y = np.repeat(np.arange(10), 1200)[np.random.default_rng(0).permutation(12000)]
    kept = suite_data.long_tailed(y)
    counts = np.bincount(y[kept], minlength=10)
    assert counts[0] == 1000 and counts[9] == 100
    assert counts.tolist() == [round(1000 * 10 ** (-i / 9)) for i in range(10)]
    first_of_class_5 = np.flatnonzero(y == 5)[: counts[5]]
    assert set(first_of_class_5) <= set(kept)


def test_suite_runs_resumes_and_counts_the_sets_at_or_above(tmp_path):
    log, output = tmp_path / "suite.jsonl", tmp_path / "suite.md"
    command = [
        sys.executable, str(BENCHMARKS / "suite.py"), "--data-dir", str(tmp_path),
        "--sets", "iris", "wine", "--seeds", "0", "--jobs", "1",
        "--methods", "SelfLabelingClusterer", "KMeans",
        "--params", '{"max_epochs": 2}', "--log", str(log), "--output", str(output),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["data"], r["method"]) for r in records) == [
        ("iris", "KMeans"), ("iris", "SelfLabelingClusterer"),
        ("wine", "KMeans"), ("wine", "SelfLabelingClusterer"),
    ]  # fmt: skip
    report = output.read_text()
    rows = {table_cells(line)[0]: line for line in report.splitlines() if line.startswith("| ")}
    assert "iris" in rows and "wine" in rows
    n_at = sum(r["acc"] >= k["acc"] - 0.005 for r in records for k in records
               if r["method"] == "SelfLabelingClusterer" and k["method"] == "KMeans"
               and k["data"] == r["data"])  # fmt: skip
    assert report.rstrip().endswith(f"At or above the best classical method on {n_at} of 2 sets.")
    rerun = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "4 fits on record, 0 to run" in rerun.stdout
    assert len(log.read_text().splitlines()) == 4


def test_gpu_check_dry_run_writes_a_results_file_that_says_no_gpu_was_measured(tmp_path):
    output = tmp_path / "gpu.md"
    script = BENCHMARKS / "gpu_check.sh"
    command = ["bash", str(script), "--cpu-only", "--tiny", "--data-dir", str(tmp_path)]
    subprocess.run([*command, "--output", str(output)], check=True, capture_output=True)
    text = output.read_text()
    assert "**No GPU was measured**" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "fit s" not in line]
    assert any("digits (1797 x 64), flat rows" in row for row in rows)
    assert any("online mode" in row for row in rows)
    for row in rows:
        assert float(table_cells(row)[1].split(" ")[0]) > 0


def test_first_fit_reports_what_the_first_fit_costs_beyond_the_others(tmp_path, monkeypatch):
    first_fit = load_script("first_fit")
    runs = []

    def fake_child(spec):
        runs.append(spec)
        return {"seconds": [3.0, 1.0, 2.0], "import_s": 1.5}

    monkeypatch.setattr(first_fit, "run_child", fake_child)
    output = tmp_path / "first_fit.md"
    monkeypatch.setattr(sys, "argv", ["first_fit.py", "--sets", "wine", "--output", str(output)])
    first_fit.main()
    assert [spec["set"] for spec in runs] == ["wine"]
    lines = output.read_text().splitlines()
    rows = [table_cells(line) for line in lines if line.startswith("| wine")]
    assert rows == [["wine", "1.50", "3.00, 1.00, 2.00", "+1.50"]]


def test_first_fit_child_fits_in_a_fresh_process():
    first_fit = load_script("first_fit")
    result = first_fit.run_child({"set": "iris", "fits": 2, "threads": 1})
    assert len(result["seconds"]) == 2 and all(s > 0 for s in result["seconds"])
    assert result["import_s"] > 0


def test_label_step_row_of_a_fit_without_label_steps_says_so():
    bench = load_script("bench_label_step")
    X, y = load_digits(return_X_y=True)
    # Two epochs from the mixture start: no step in the first quarter, nor before the
    # network has learned its start.
    row = bench.label_step_row("digits", X[:300], y[:300], "defaults", {"max_epochs": 2}, 0)
    cells = table_cells(row)
    assert cells[3] == "0" and cells[8] == "-"


def test_profile_fit_reports_the_fit_and_its_costliest_calls():
    profile_fit = load_script("profile_fit")
    X, y = load_iris(return_X_y=True)
    seconds, accuracy, report = profile_fit.profile_fit(X, y, seed=0, top=5, max_epochs=2)
    assert seconds > 0 and 0 < accuracy <= 1
    assert "cumulative" in report and "fit" in report
