"""Hub fallback helpers: alias suggestions."""

from stcstore.hub import did_you_mean


def test_did_you_mean_picks_the_close_alias_only():
    assert did_you_mean("minilmx", ("minilm", "smollm2")) == " (did you mean minilm?)"
    assert did_you_mean("SmolLM", ("minilm", "smollm2")) == " (did you mean smollm2?)"
    assert did_you_mean("bert-base-uncased", ("minilm", "smollm2")) == ""
