"""The checks that need one CUDA GPU (tests/gpu/device_run.sh runs them on the lent machine). A package, so that
its conftest.py does not shadow tests/conftest.py, whose helpers the tests import."""
