"""A stand-in for cuML backed by scikit-learn, so CI can test the cuml backend's wiring without a GPU.

Only what stcstore uses: cuml.linear_model.LogisticRegression with cuML's parameter names.
Tests put this folder first on sys.path (monkeypatch.syspath_prepend); it is never installed.
"""

__version__ = "0.0-standin"
