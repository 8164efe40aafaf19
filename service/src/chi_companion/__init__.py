"""chi-companion: the home-server back end of the EclipseTuner OBD-II logger."""

__version__ = "0.2.0"
