"""`robmon calibrate` as a user runs it, on the demo store (8×8 digits CNN)."""


def test_no_attack_succeeds_at_a_tiny_eps_and_calibration_still_finishes(demo_home, robmon):
    result = robmon(
        "calibrate", "models:/digits-cnn/1", "--eps", "0.0001", "--limit", "120", "--json"
    )
    assert result.code == 0, result.stderr
    data = result.json()
    assert set(data["n_adversarial"].values()) == {0}
    assert "no attack fooled the model" in data["reason"]
    for detector in data["detectors"]:
        assert all(counts == [0, 0] for counts in detector["detected"].values())
    assert data["squeezers"] and data["thresholds"]["squeeze"] is not None


def test_eps_grid_takes_fractions_and_reports_detection_per_eps(demo_home, robmon):
    result = robmon("calibrate", "digits-cnn", "--eps", "51/255,0.3", "--limit", "120")
    assert result.code == 0, result.stderr
    assert "0.2: " in result.stdout and "0.3: " in result.stdout  # 51/255 = 0.2
    data = robmon("calibrate", "digits-cnn", "--eps", "0.3", "--limit", "120", "--json").json()
    squeezing = next(d for d in data["detectors"] if d["detector"] == "squeezing")
    assert set(squeezing["by_eps"]) == {"0.3"}
    assert set(squeezing["detected"]) == {"fgsm@0.3", "pgd@0.3", "pgd+@0.3"}


def test_bad_eps_is_one_sentence_and_a_non_zero_exit(demo_home, robmon):
    result = robmon("calibrate", "digits-cnn", "--eps", "8/zero")
    assert result.code != 0
    assert "--eps takes numbers such as" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
