"""Reports and the regression gate, from stored results only (nothing is re-run).

`frame` reads a run and tidies it (the gate and the report share it); `page` builds the HTML and
markdown report from `tables` and `plots`; `compare` is the gate between two runs.
"""
