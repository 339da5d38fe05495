// Empty: this package exists only to pin objc2-core-ml for shim_check.py.
