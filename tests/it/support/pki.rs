//! Certificates made at test time: a CA, a server certificate for localhost and 127.0.0.1, a
//! client certificate, as PEM files (gRPC, Redis and etcd over TLS).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// PEM files in a temporary directory: `ca.pem`, `server.pem`/`server.key`,
/// `client.pem`/`client.key`, and `other-ca.pem` (a CA that signed nothing here).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
        };
        let (root, other) = (ca("wsgw test CA"), ca("another CA"));
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        write("ca.pem", &root.pem());
        write("other-ca.pem", &other.pem());
        for (name, sans) in
            [("server", vec!["localhost", "127.0.0.1"]), ("client", vec!["operator"])]
        {
            let key = KeyPair::generate().expect("key");
            let sans: Vec<String> = sans.into_iter().map(str::to_owned).collect();
            let cert =
                CertificateParams::new(sans).expect("params").signed_by(&key, &root).expect("sign");
            write(&format!("{name}.pem"), &cert.pem());
            write(&format!("{name}.key"), &key.serialize_pem());
        }
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A TLS acceptor serving the server certificate (for services that cannot speak TLS
    /// themselves, behind [`super::cluster::Cut::start_with`]).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls::{
            self,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        };
        let certs = CertificateDer::pem_file_iter(self.path("server.pem"))
            .expect("read cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_file(self.path("server.key")).expect("key PEM");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }
}
