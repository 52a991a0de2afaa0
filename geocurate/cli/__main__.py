"""`python -m geocurate.cli`: the same entry point as the `geocurate` console script."""

from geocurate.cli import main

main()
