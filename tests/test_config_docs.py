"""docs/configuration.md is generated from the schema and the registries, and must match them."""

from omnirad_fl.simulations.config_docs import DOC, main, render


def test_the_key_table_in_the_docs_is_the_schemas():
    assert DOC.read_text() == render(), "run: python -m omnirad_fl.simulations.config_docs"
    assert main(["--check"]) == 0


def test_every_key_and_every_registered_name_is_documented():
    from omnirad.config import flat_defaults
    from omnirad_fl.simulations.config_docs import REGISTRIES

    text = render()
    assert all(f"| `{key}` |" in text for key in flat_defaults())
    assert all(f"`{name}`" in text for registry in REGISTRIES for name in registry)
