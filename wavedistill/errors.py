"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class WavedistillError(Exception):
    """Bad input or a failed run the user can fix; the message says what to do."""


class DataError(WavedistillError):
    pass


class AdapterError(WavedistillError):
    pass


class ModelLoadError(WavedistillError):
    pass


class TrainingError(WavedistillError):
    pass


class SurgeryError(WavedistillError, ValueError):
    """A conversion request that cannot be carried out (layer indices, non-causal mixer, ...)."""


class MixerArgumentError(WavedistillError, TypeError):
    pass


class MixerValueError(WavedistillError, ValueError):
    """A mixer argument with a value the mixer cannot take."""


class MixerStateError(WavedistillError, ValueError):
    """A decoding state that does not fit the mixer or the batch (another batch size, no state form)."""
