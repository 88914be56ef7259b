def test_demo_seeds_three_models_then_reuses_them(home, robmon) -> None:
    first = robmon("demo", "--no-serve", "--json")
    assert first.code == 0, first.stderr
    models = {(m["name"], m["version"]): m for m in first.json()["models"]}
    assert set(models) == {("digits-cnn", "1"), ("digits-cnn", "2"), ("digits-logreg", "1")}
    assert all(m["created"] for m in models.values())
    assert all(m["clean_accuracy"] > 0.9 for m in models.values())
    assert models[("digits-logreg", "1")]["kind"] == "blackbox"

    data = first.json()
    assert {a["status"] for a in data["audits"]} == {"succeeded"}
    assert data["ingest"]["scored"] > 1500 and data["ingest"]["dead_letters"] == 0
    alerted_kinds = {data["attackers"].get(a["source"]) for a in data["alerts"]}
    assert alerted_kinds == set(data["attackers"].values())  # every attacker kind ...
    assert not {a["source"] for a in data["alerts"]} & set(data["benign_sources"])  # no benign

    second = robmon("demo", "--no-serve", "--json")
    assert second.code == 0, second.stderr
    again = second.json()
    assert not any(m["created"] for m in again["models"])
    assert again["ingest"]["records"] == 0  # the log was already ingested
    assert [a["id"] for a in again["alerts"]] == [a["id"] for a in data["alerts"]]

    user = data["dashboard_user"]  # printed once, kept across runs, stored only hashed
    assert user["name"] == "demo" and user["role"] == "triager" and len(user["password"]) >= 8
    assert again["dashboard_user"] == user
    assert {"name": "demo", "role": "triager"} in robmon("users", "list", "--json").json()
    stored = (home / "dashboard-users.toml").read_text()
    assert user["password"] not in stored and "scrypt:" in stored

    listing = {m["name"]: m for m in robmon("models", "list", "--json").json()}
    assert listing["digits-cnn"]["aliases"] == {"champion": "1"}
    assert [v["version"] for v in listing["digits-cnn"]["versions"]] == ["1", "2"]
    # each version carries an input example and a signature (MLflow's MLmodel file)
    from mlflow.models import get_model_info

    info = get_model_info("models:/digits-cnn/2")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert (home / "mlartifacts" / "robmon-models").is_dir()
    assert not (home.parent / "mlruns").exists()
