"""`python -m dlrun.cli ...` is `dlrun ...`."""
from dlrun.cli.main import main

main()
