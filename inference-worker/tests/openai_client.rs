//! The official `openai` Python client against two running servers (SmolLM2 for chat,
//! MiniLM for embeddings), both behind an API key.

mod common;

use common::{loopback_args, minilm_dir, smollm2_gguf, start};

#[tokio::test]
async fn official_openai_client_chats_streams_and_embeds() {
    let dir = std::env::temp_dir().join(format!("aigc-serve-openai-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, "sk-test-openai\n").unwrap();

    let mut chat_args = loopback_args(smollm2_gguf());
    chat_args.api_key_file = Some(keys.clone());
    let mut embed_args = loopback_args(minilm_dir());
    embed_args.api_key_file = Some(keys);
    let (chat, embed) = tokio::join!(start(chat_args), start(embed_args));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(chat.base_url())
        .arg(chat.model_id())
        .arg(embed.base_url())
        .arg(embed.model_id())
        .arg("sk-test-openai")
        .output()
        .await
        .expect("python3 runs (see scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openai client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ok"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
