"""The model files (installed with the package as ``brian_lcsnn.model_files``; read with importlib.resources)."""
