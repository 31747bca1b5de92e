"""The Flower ClientApp: a thin layer that moves records in and out of ``omnirad.site``."""
