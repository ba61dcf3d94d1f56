"""What the built-in implementations build and keep: the fused C++ kernels (``kernels.py``, sources in
``csrc/``) and the exported graphs the deployment runtimes load (``export_cache.py``)."""
