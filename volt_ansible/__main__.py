from volt_ansible.cli import main

main()
