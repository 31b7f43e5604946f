from lmserve.cli.main import cli

cli()
