"""The local MLflow store is made from a migrated template in the user's cache: a new project
pays no migrations, and gets the same store MLflow would have made."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.tracking import mlflow_store


def _default_artifacts(db: Path) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    client.create_run(client.create_experiment("x"))  # the schema is whole: runs can be made
    return str(client.get_experiment("0").artifact_location)


def test_a_second_project_s_store_is_a_copy_of_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for project in ("a", "b"):
        (tmp_path / project / "mlruns").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    mlflow_store.create_store(Path("mlruns/mlflow.db"))
    assert list((tmp_path / "cache" / "regsearch").iterdir()) == [mlflow_store._template()], (
        "one template, no temporary file left"
    )

    def no_migrations(uri: str) -> None:
        raise AssertionError(f"migrated {uri} again")

    monkeypatch.setattr(mlflow_store, "_init_store", no_migrations)
    monkeypatch.chdir(tmp_path / "b")
    mlflow_store.create_store(Path("mlruns/mlflow.db"))
    assert _default_artifacts(tmp_path / "b" / "mlruns" / "mlflow.db") == str(
        tmp_path / "b" / "mlruns" / "0"
    )


def test_without_a_writable_cache_the_store_is_migrated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    (tmp_path / "mlruns").mkdir()
    mlflow_store.create_store(tmp_path / "mlruns" / "mlflow.db")
    assert _default_artifacts(tmp_path / "mlruns" / "mlflow.db") == str(tmp_path / "mlruns" / "0")
    assert sorted(p.name for p in (tmp_path / "mlruns").iterdir()) == ["mlflow.db"]


def test_without_a_home_the_store_is_migrated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    (tmp_path / "mlruns").mkdir()
    mlflow_store.create_store(tmp_path / "mlruns" / "mlflow.db")
    assert _default_artifacts(tmp_path / "mlruns" / "mlflow.db") == str(tmp_path / "mlruns" / "0")
