"""pvdisplay: Xen PV display (displif) and input (kbdif) in Python."""

__version__ = "0.1.0"
