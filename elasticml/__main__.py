from elasticml.cli import main

main()
