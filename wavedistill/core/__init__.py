"""The small core every other package builds on: devices and dtypes, optimizer parameter groups, and strict
dataclass configs read from YAML. It imports only :mod:`wavedistill.errors` and third-party libraries, so the
distiller, the lab and the command lines can all import it from below."""
