from noderun.cli import main

main()
