//! The cluster's certificate authority and serving certificate, generated fresh for every
//! start. Clients trust the CA through the kubeconfig; the serving certificate names
//! `localhost` and `127.0.0.1`. This module owns key material only; it never listens.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Error;

/// A CA certificate and a server certificate it signed, ready for rustls.
pub struct ServingCerts {
    /// The CA certificate, PEM encoded, for the kubeconfig's `certificate-authority-data`.
    pub ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl ServingCerts {
    /// Generate a CA and a serving certificate for the loopback names.
    pub fn generate() -> Result<Self, Error> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "aigc-local-cluster-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(tls)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(tls)?;
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_chain: vec![cert.der().clone(), ca_cert.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// A rustls server configuration offering HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        // ring, like the kube client in this workspace; post-quantum key exchange does not
        // matter for a loopback development server.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .map_err(|e| Error::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Make ring the process-wide rustls crypto provider unless one is installed already. The kube
/// client builds its TLS configuration from the process default, and this workspace compiles
/// both ring (kube) and aws-lc-rs (the AWS SDK) into rustls, which then cannot pick by itself.
pub fn install_default_crypto_provider() {
    // An error only means another provider was installed first, which serves as well. ring is
    // deprecated only for lacking post-quantum key exchange, as in `server_config`.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}
