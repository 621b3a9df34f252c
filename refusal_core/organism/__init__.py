"""The offline refusal model organism: its build (``build``) and its report against the
acceptance targets (``report``)."""
