"""PV input (kbdif): what outputs send, the backend that forwards it, the guest frontend."""
