"""Studies: tasks x methods x seeds run as independent ``seqcomm fit`` cells, then reported
with rliable's interval estimates (``seqcomm study`` and ``seqcomm report``)."""
