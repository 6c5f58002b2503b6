"""The model registry: make compare registers its variants and names a champion; make register;
make predict MODEL=models:/<name>@<alias>."""

from __future__ import annotations

import pytest

from lk_segment.commands.cli import main
from lk_segment.comparison.report import headline, load_comparison, summarise
from lk_segment.errors import UserError
from lk_segment.model_registry import register
from tests.conftest import store_client, use_working_folder

pytestmark = pytest.mark.slow  # they read the trained tiny comparison


@pytest.fixture
def in_comparison(tiny_comparison, monkeypatch):
    """The shared comparison's store, read only (tests that register use ``comparison_copy``)."""
    monkeypatch.chdir(tiny_comparison["work"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_comparison["uri"])
    return tiny_comparison


def test_compare_registers_each_variant_and_the_best_as_champion(in_comparison):
    name = in_comparison["experiment"]
    client = store_client(in_comparison["uri"])
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.tags["variant"] for v in versions) == ["1x5", "3x3"]
    assert in_comparison["registered"] and set(in_comparison["registered"]) == {"1x5", "3x3"}
    rows = summarise(load_comparison(name, in_comparison["parent_run_id"])[1])
    key = headline(rows)
    means = {r.variant: r.stats[key][0] for r in rows}
    champion = client.get_model_version_by_alias(name, "champion")
    assert means[champion.tags["variant"]] == max(means.values())  # the best (either, on a tie)


def test_predict_from_the_registry_writes_the_champion_runs_masks(in_comparison, tiny_root, tmp_path):
    name = in_comparison["experiment"]
    champion = store_client(in_comparison["uri"]).get_model_version_by_alias(name, "champion")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "synth0001_03.jpg").write_bytes((tiny_root / "train" / "synth0001_03.jpg").read_bytes())
    assert main(["predict", "--model", f"models:/{name}@champion", "--input", str(inputs),
                 "--out", str(tmp_path / "registry"), "--device", "cpu"]) == 0
    assert main(["predict", "--run", champion.tags["run_id"], "--input", str(inputs),
                 "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    a = (tmp_path / "registry" / "submission.csv").read_text()
    b = (tmp_path / "run" / "submission.csv").read_text()
    assert a == b and len(a.splitlines()) == 2  # the same masks (the run's best checkpoint, fused)


def test_make_register_adds_a_version_with_its_alias(comparison_copy, monkeypatch, capsys):
    use_working_folder(monkeypatch, comparison_copy["work"])
    run_id = next(iter(load_comparison(comparison_copy["experiment"])[1])).run_id
    assert main(["register", "--run", run_id, "--name", "lk-test", "--alias", "staging"]) == 0
    assert "models:/lk-test@staging" in capsys.readouterr().out
    version = store_client(comparison_copy["uri"]).get_model_version_by_alias("lk-test", "staging")
    assert version.tags["run_id"] == run_id
    assert str(version.version) == "1"  # a new name starts at 1
    assert main(["register", "--run", run_id, "--name", "lk-test", "--alias", "staging"]) == 0
    assert str(store_client(comparison_copy["uri"]).get_model_version_by_alias("lk-test", "staging").version) == "2"


def test_a_run_without_a_model_cannot_be_registered(comparison_copy, monkeypatch):
    use_working_folder(monkeypatch, comparison_copy["work"])
    client = store_client(comparison_copy["uri"])
    run_id = client.create_run(client.create_experiment("bare")).info.run_id
    with pytest.raises(UserError, match="has no MLflow model"):
        register(run_id)
    with pytest.raises(UserError, match="no lk_segment model"):
        main(["--debug", "predict", "--model", "models:/nothing@champion", "--input", ".", "--out", "o"])
