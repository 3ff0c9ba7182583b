from mose_lsp.config import Settings


def test_defaults_and_camel_case_keys():
    settings, warnings = Settings.from_dict({"rerankCandidates": 50, "background_deep": False})
    assert warnings == []
    assert settings.rerank_candidates == 50 and settings.background_deep is False
    assert settings.limit == Settings().limit


def test_invalid_values_fall_back_with_a_warning_each():
    settings, warnings = Settings.from_dict(
        {"threads": -3, "rerank": "yes", "exclude": "*.py", "nope": 1, "limit": 5})
    assert settings.threads == Settings().threads
    assert settings.rerank is True
    assert settings.exclude == ()
    assert settings.limit == 5
    assert len(warnings) == 4
    assert any("'nope'" in w for w in warnings)
    assert any("threads" in w and "0..256" in w for w in warnings)


def test_non_dict_and_bool_is_not_int():
    settings, warnings = Settings.from_dict(["x"])
    assert settings == Settings() and len(warnings) == 1
    settings, warnings = Settings.from_dict({"limit": True})
    assert settings.limit == Settings().limit and warnings


def test_update_on_top_of_base():
    base, _ = Settings.from_dict({"limit": 7})
    updated, _ = Settings.from_dict({"debounceMs": 10}, base=base)
    assert updated.limit == 7 and updated.debounce_ms == 10


def test_lexical_weight_is_a_number_in_0_1():
    assert Settings().lexical_weight == 0.1
    settings, warnings = Settings.from_dict({"lexicalWeight": 0.25})
    assert warnings == [] and settings.lexical_weight == 0.25
    settings, warnings = Settings.from_dict({"lexicalWeight": 0})  # JSON integer
    assert warnings == [] and settings.lexical_weight == 0.0
    assert isinstance(settings.lexical_weight, float)
    settings, warnings = Settings.from_dict({"lexicalWeight": None})  # JSON null: the default
    assert warnings == [] and settings.lexical_weight == 0.1
    for bad in (1.5, -0.1, float("nan"), float("inf"), True, "0.1"):
        settings, warnings = Settings.from_dict({"lexical_weight": bad})
        assert settings.lexical_weight == 0.1, bad
        assert len(warnings) == 1 and "lexical_weight" in warnings[0], bad
