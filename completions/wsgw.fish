# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_wsgw_global_optspecs
    string join \n log-format= h/help V/version
end

function __fish_wsgw_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_wsgw_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_wsgw_using_subcommand
    set -l cmd (__fish_wsgw_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c wsgw -n "__fish_wsgw_needs_command" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_needs_command" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_needs_command" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "serve" -d 'Run a gateway node (embedded defaults when no config is given)'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "push" -d 'Push a message to every connection of a user (cluster-wide in cluster mode), or broadcast it'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "sessions" -d 'List connections: node, connection id, user, remote address, since, messages in/out'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "kick" -d 'Disconnect every connection of a user, telling the client why'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "top" -d 'Live dashboard of the cluster\'s nodes (q quits)'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "alert-webhook" -d 'Grafana contact point: POST /webhook/v1 redirects a share of an alerting node\'s clients'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "loadtest" -d 'Drive nodes with many real WebSocket clients; report throughput, latency and errors.'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "token" -d 'Print a JWT for a user that a node with the same secret accepts'
complete -c wsgw -n "__fish_wsgw_needs_command" -f -a "generate-docs" -d 'Write completions and man pages (for packaging; hidden from --help)'
complete -c wsgw -n "__fish_wsgw_using_subcommand serve" -s c -l config -d 'YAML config file; every key can be overridden by WSGW_<KEY__PATH> variables' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand serve" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand serve" -l check -d 'Validate the configuration and exit (0 valid, 2 invalid)'
complete -c wsgw -n "__fish_wsgw_using_subcommand serve" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand serve" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l user -d 'Receiver\'s user id' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l biz -d 'Receiver\'s business id' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l key -d 'Message key (the client acknowledges it); a random one by default' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l addr -d 'One node\'s gRPC address (server.grpc.listen)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd -d 'The nodes registered in etcd instead (host:port[,host:port])' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd-prefix -d 'Key prefix of the registry in etcd (cluster.etcd.prefix)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd-ca -d 'CA (PEM) of etcd\'s certificates, for https:// --etcd members; default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd-cert -d 'Client certificate (PEM) for an etcd that requires one (--client-cert-auth)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd-user -d 'etcd user, when etcd\'s authentication is on (cluster.etcd.username)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd-password -d 'Its password (cluster.etcd.password)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l etcd-password-file -d 'Read the etcd password from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l tls-ca -d 'CA (PEM) of the nodes\' gRPC certificates, for https:// addresses (nodes with server.grpc.tls register theirs so); default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l tls-cert -d 'Client certificate (PEM) for nodes that require mutual TLS (server.grpc.tls.client_ca)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l tls-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l token -d 'The backend token (server.grpc.tokens.backend; else WSGW_SERVER__GRPC__TOKEN)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l token-file -d 'Read the backend token from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l file -d 'Read the body from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l timeout -d 'Give up after this long' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -l all -d 'Broadcast to every connection of --biz (every connection of the node with --biz 0); encoded once, not retransmitted'
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand push" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l addr -d 'One node\'s gRPC address (server.grpc.listen)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd -d 'The nodes registered in etcd instead (host:port[,host:port])' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd-prefix -d 'Key prefix of the registry in etcd (cluster.etcd.prefix)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd-ca -d 'CA (PEM) of etcd\'s certificates, for https:// --etcd members; default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd-cert -d 'Client certificate (PEM) for an etcd that requires one (--client-cert-auth)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd-user -d 'etcd user, when etcd\'s authentication is on (cluster.etcd.username)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd-password -d 'Its password (cluster.etcd.password)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l etcd-password-file -d 'Read the etcd password from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l tls-ca -d 'CA (PEM) of the nodes\' gRPC certificates, for https:// addresses (nodes with server.grpc.tls register theirs so); default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l tls-cert -d 'Client certificate (PEM) for nodes that require mutual TLS (server.grpc.tls.client_ca)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l tls-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l token -d 'The operator token (server.grpc.tokens.operator; else WSGW_SERVER__GRPC__TOKEN)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l token-file -d 'Read the operator token from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l biz -d 'Only this business' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l user -d 'Only this user (with --biz)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l node -d 'Only connections on this node id' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -l json -d 'JSON for scripts: {"sessions":[{"nodeId","connId","bizId","userId","remoteAddr", "connectedAtMs","messagesIn","messagesOut"}]} (64-bit numbers as strings)'
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand sessions" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l addr -d 'One node\'s gRPC address (server.grpc.listen)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd -d 'The nodes registered in etcd instead (host:port[,host:port])' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd-prefix -d 'Key prefix of the registry in etcd (cluster.etcd.prefix)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd-ca -d 'CA (PEM) of etcd\'s certificates, for https:// --etcd members; default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd-cert -d 'Client certificate (PEM) for an etcd that requires one (--client-cert-auth)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd-user -d 'etcd user, when etcd\'s authentication is on (cluster.etcd.username)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd-password -d 'Its password (cluster.etcd.password)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l etcd-password-file -d 'Read the etcd password from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l tls-ca -d 'CA (PEM) of the nodes\' gRPC certificates, for https:// addresses (nodes with server.grpc.tls register theirs so); default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l tls-cert -d 'Client certificate (PEM) for nodes that require mutual TLS (server.grpc.tls.client_ca)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l tls-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l token -d 'The operator token (server.grpc.tokens.operator; else WSGW_SERVER__GRPC__TOKEN)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l token-file -d 'Read the operator token from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l user -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l biz -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l conn -d 'Only this connection (see `wsgw sessions`)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l reason -d 'Close reason the client sees' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -l json -d 'JSON for scripts: {"closed":N,"nodes":[{"node","closed"}]}'
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand kick" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l addr -d 'One node\'s gRPC address (server.grpc.listen)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd -d 'The nodes registered in etcd instead (host:port[,host:port])' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd-prefix -d 'Key prefix of the registry in etcd (cluster.etcd.prefix)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd-ca -d 'CA (PEM) of etcd\'s certificates, for https:// --etcd members; default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd-cert -d 'Client certificate (PEM) for an etcd that requires one (--client-cert-auth)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd-user -d 'etcd user, when etcd\'s authentication is on (cluster.etcd.username)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd-password -d 'Its password (cluster.etcd.password)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l etcd-password-file -d 'Read the etcd password from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l tls-ca -d 'CA (PEM) of the nodes\' gRPC certificates, for https:// addresses (nodes with server.grpc.tls register theirs so); default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l tls-cert -d 'Client certificate (PEM) for nodes that require mutual TLS (server.grpc.tls.client_ca)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l tls-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l token -d 'The operator token (server.grpc.tokens.operator; else WSGW_SERVER__GRPC__TOKEN)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l token-file -d 'Read the operator token from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l interval -d 'Refresh interval' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand top" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l listen -d 'Where to listen' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l listen-cert -d 'Serve HTTPS with this certificate chain (PEM), with --listen-key' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l listen-key -d 'The private key (PEM) of --listen-cert' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l addr -d 'One node\'s gRPC address (server.grpc.listen)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd -d 'The nodes registered in etcd instead (host:port[,host:port])' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd-prefix -d 'Key prefix of the registry in etcd (cluster.etcd.prefix)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd-ca -d 'CA (PEM) of etcd\'s certificates, for https:// --etcd members; default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd-cert -d 'Client certificate (PEM) for an etcd that requires one (--client-cert-auth)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd-user -d 'etcd user, when etcd\'s authentication is on (cluster.etcd.username)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd-password -d 'Its password (cluster.etcd.password)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l etcd-password-file -d 'Read the etcd password from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l tls-ca -d 'CA (PEM) of the nodes\' gRPC certificates, for https:// addresses (nodes with server.grpc.tls register theirs so); default: the system\'s roots' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l tls-cert -d 'Client certificate (PEM) for nodes that require mutual TLS (server.grpc.tls.client_ca)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l tls-key -d 'Its private key (PEM)' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l token -d 'Token webhook requests must carry (Authorization: Bearer TOKEN; Grafana\'s "Authorization header - Credentials")' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l token-file -d 'Read the webhook token from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l basic-auth -d 'Or basic auth credentials requests must carry, as user:password' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l basic-auth-file -d 'Read the basic auth credentials (user:password) from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l admin-token -d 'The nodes\' operator token (server.grpc.tokens.operator; else WSGW_SERVER__GRPC__TOKEN)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l admin-token-file -d 'Read the nodes\' operator token from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l percent -d 'Share of the alerting node\'s connections to redirect (0 < p ≤ 1)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l label -d 'Alert label that names the node (tried after node_id, before instance)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l cooldown -d 'The same alert is not acted on again within this time' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand alert-webhook" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l url -d 'WebSocket URL(s) of the node(s), used round-robin' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -s n -l connections -d 'Connections to open (each one a distinct user)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l ramp -d 'New connections per second while ramping up' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l secret -d 'Mint tokens with this secret (default: the --config / WSGW_AUTH__JWT__SECRET secret)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l secret-file -d 'Read the secret to mint tokens with from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -s c -l config -d 'Node config to take the JWT secret from' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l token-file -d 'Use the token in this file for every connection' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l biz -d 'Business id of the simulated users' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l first-user -d 'User id of the first connection; connection i is user first_user + i' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l source -d 'Local source addresses to spread connections over (127.0.0.2,127.0.0.3,...)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l serializer -d 'The node\'s serializer' -r -f -a "json\t''
proto\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l scenario -d 'Scenarios to run' -r -f -a "idle\t''
upstream\t''
push\t''
broadcast\t''
churn\t''
verify\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l duration -d 'How long to measure after the ramp-up (an upper bound when counts are given)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l rate -d 'upstream: messages per second per connection' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l messages -d 'upstream: messages per connection; the run ends when all are answered' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l body-size -d 'Body size of upstream, push and broadcast messages, in bytes' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l push-addr -d 'push/broadcast: the node\'s gRPC address (verify: the nodes\', comma-separated)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l push-token -d 'push/broadcast/verify: the backend token (server.grpc.tokens.backend; else WSGW_SERVER__GRPC__TOKEN)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l push-token-file -d 'Read the backend token from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l push-rate -d 'push: pushes per second in total' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l pushes -d 'push: pushes in total; the run ends when all are delivered or failed' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l broadcasts -d 'broadcast: how many broadcasts' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l broadcast-interval -d 'broadcast: pause between broadcasts (each first waits for its fan-out); 0 = back to back' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l churn-rate -d 'churn: connect/close cycles per second' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l kafka-brokers -d 'verify: Kafka bootstrap servers; half of the pushes go through the push topic' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l kafka-topic -d 'verify: the push topic' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l settle -d 'verify: how long to wait after the last push for every accepted one to arrive' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l upstream-rate -d 'verify: upstream messages per second per user (0: none); each user resends its message, same key, after an error or a reconnect until it is acknowledged' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l reconnect-rate -d 'verify: users who drop their connection and reconnect, per second in total (0: none)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l upstream-keys -d 'verify: write the keys of the acknowledged upstream messages to this file, one per line' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l server-pid -d 'Report this server process\'s RSS (idle memory per connection)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l json -d 'Also write the report as JSON to this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c wsgw -n "__fish_wsgw_using_subcommand loadtest" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l user -d 'User id (claim `user_id`)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l biz -d 'Business id (claim `biz_id`)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l ttl -d 'Lifetime of the token ("1h", "30m", ...)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l secret -d 'HMAC secret; defaults to the node\'s `auth.jwt.secret` from --config or WSGW_AUTH__JWT__SECRET' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l secret-file -d 'Read the HMAC secret from this file' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -s c -l config -d 'Take secret, issuer, audience and algorithm from this node config' -r -F
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l issuer -d 'Claim `iss` (default: the config\'s auth.jwt.issuer)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l audience -d 'Claim `aud` (default: the config\'s auth.jwt.audience)' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l kid -d 'Sign with the config\'s `auth.jwt.secrets` entry of this kid (or with --secret), and name it in the token\'s header' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l alg -d 'HMAC algorithm (default: the first HMAC one of the config\'s auth.jwt.algorithms). Public-key tokens come from the identity provider that holds the private key' -r
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand token" -s V -l version -d 'Print version'
complete -c wsgw -n "__fish_wsgw_using_subcommand generate-docs" -l log-format -d 'Log format (overrides `log.format`)' -r -f -a "human\t''
json\t''"
complete -c wsgw -n "__fish_wsgw_using_subcommand generate-docs" -s h -l help -d 'Print help'
complete -c wsgw -n "__fish_wsgw_using_subcommand generate-docs" -s V -l version -d 'Print version'
