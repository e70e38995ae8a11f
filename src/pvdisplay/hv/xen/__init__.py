"""`pvdisplay.hv` on real Xen, over Linux's /dev/xen/{gntalloc,gntdev,evtchn} devices."""
