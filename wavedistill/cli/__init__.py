"""The command lines, on top of everything else (nothing imports them): ``wavedistill`` (main), its ``lab``
commands (lab), the offline demo (demo) and the argparse types they share (argtypes)."""
