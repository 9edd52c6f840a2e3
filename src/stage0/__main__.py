from stage0.cli.main import main

main()
