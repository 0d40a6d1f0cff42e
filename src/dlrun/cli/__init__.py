"""The command-line entry points: dlrun, dlrun-eval, dlrun-predict, dlrun-report."""
