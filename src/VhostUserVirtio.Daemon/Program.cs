using System.CommandLine;
using VhostUserVirtio.Daemon;

// vhost-virtio: `serve` is also what runs with no subcommand, so libvirt-style invocations
// (`vhost-virtio --print-capabilities`, `vhost-virtio --socket-path=PATH`) work as the spec expects.
var root = new RootCommand("vhost-virtio: a vhost-user back end serving a virtio-net device group (PF, VFs, learning switch).");
var rootOptions = new ServeOptions(root);
root.SetAction(result => ServeCommand.Execute(rootOptions.Bind(result)));

var serve = new Command("serve", "Serve devices over vhost-user sockets until SIGINT or SIGTERM (the default command).");
var serveOptions = new ServeOptions(serve);
serve.SetAction(result => ServeCommand.Execute(serveOptions.Bind(result)));
root.Subcommands.Add(serve);
root.Subcommands.Add(AdminCommand.Create());
root.Subcommands.Add(VdevCommand.Create());
root.Subcommands.Add(MigrateMemberCommand.Create());
root.Subcommands.Add(KeepCommand.Create(root));
root.Subcommands.Add(CtlCommand.Create());

var parsed = root.Parse(args);
// A bad command line gets one line per error and a pointer to --help, not the whole help text, and exit 2.
if (CliValues.CheckCommandLine(parsed) is { } failed)
    return failed;
// No ProcessTerminationTimeout: the daemon handles SIGINT/SIGTERM itself and must exit 0 on them.
return parsed.Invoke(new InvocationConfiguration { ProcessTerminationTimeout = null });
