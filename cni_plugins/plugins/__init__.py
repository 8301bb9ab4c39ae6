"""One module per plugin type (the executable's name), each with its options,
cmd_add/cmd_del/cmd_check (and STATUS/GC where it owns state) and PLUGIN.
"""
