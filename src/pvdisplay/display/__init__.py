"""Xen PV display (displif.h): the backend (`backend`, `service`) and the frontend (`front`)."""
