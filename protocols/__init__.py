"""The shipped protocols (installed as ``brian_lcsnn.protocol_files``; read with importlib.resources)."""
