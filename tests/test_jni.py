"""The Java API (fmrl_sdk/runtime/cpp/jni: package dev.fmrl over libfmrl_jni) against the Python runtime, on
the shared exported test bundle: the same top-10 (ids, scores within 1e-6) on every event of a 300-event
demo stream of 30 users, session bytes both ways (plain and signed), added items, refusals as FmrlException
with the library's (Python's) message, use after close as IllegalStateException (no crash, also racing
threads), and 100,000 observe/recommend calls under -Xcheck:jni without a JNI warning (local references) and
with the process RSS reported before and after. The library is test_cpp_runtime's build, reconfigured with
-DFMRL_WITH_JNI=ON; a small Java driver is compiled with javac and run with `java -Xcheck:jni`. Skipped, with
the reason, only when javac (or java) cannot be found.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime import Recommender
from tests.helpers import KEY, make_stream

STRESS_CALLS = 100_000

DRIVER = r"""
import dev.fmrl.*;
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import java.util.concurrent.atomic.AtomicReference;

public class FmrlJniDriver {
  static byte[] hex(String text) {
    if (text.equals("-")) return null;
    byte[] out = new byte[text.length() / 2];
    for (int i = 0; i < out.length; i++) out[i] = (byte) Integer.parseInt(text.substring(2 * i, 2 * i + 2), 16);
    return out;
  }

  static String line(Recommendations top) {
    StringBuilder out = new StringBuilder();
    for (int i = 0; i < top.size(); i++) out.append(i == 0 ? "" : ",").append(top.id(i));
    out.append('\t');
    for (int i = 0; i < top.size(); i++) out.append(i == 0 ? "" : ",").append(Float.toString(top.score(i)));
    return out.toString();
  }

  static List<String[]> events(String path) throws IOException {
    List<String[]> out = new ArrayList<>();
    for (String l : Files.readAllLines(Paths.get(path), StandardCharsets.UTF_8)) out.add(l.split("\t", -1));
    return out;
  }

  static long rssKb() throws IOException {
    for (String l : Files.readAllLines(Paths.get("/proc/self/status")))
      if (l.startsWith("VmRSS:")) return Long.parseLong(l.replaceAll("[^0-9]", ""));
    return -1;
  }

  interface Call { void run() throws Exception; }

  // one line per case: name, the exception's class, its fmrl_status code (or -), its message
  static void expect(PrintStream out, String name, Call call) {
    try {
      call.run();
      out.println(name + "\tnone\t-\t-");
    } catch (FmrlException e) {
      out.println(name + "\tFmrlException\t" + e.code() + "/" + e.status() + "\t" + e.getMessage());
    } catch (Exception e) {
      out.println(name + "\t" + e.getClass().getSimpleName() + "\t-\t" + e.getMessage());
    }
  }

  public static void main(String[] args) throws Exception {
    String mode = args[0], bundle = args[1];
    if (mode.equals("replay")) {  // EVENTS OUT SAVEDIR KEYHEX: user<TAB>item lines; observe, then top-10
      byte[] key = hex(args[5]);
      Map<String, Session> sessions = new LinkedHashMap<>();
      try (Recommender rec = Recommender.open(bundle);
           PrintWriter out = new PrintWriter(Files.newBufferedWriter(Paths.get(args[3])))) {
        out.println(Recommender.version() + "\t" + rec.granularity() + "\t" + rec.kMax() + "\t" + rec.numItems()
                    + "\t" + rec.stateBytes());
        for (String[] e : events(args[2])) {
          Session s = sessions.get(e[0]);
          if (s == null) sessions.put(e[0], s = rec.newSession());
          boolean advanced = s.observe(e[1]);
          out.println(advanced + "\t" + line(s.recommend(10)) + "\t" + line(s.recommend(10, true)));
        }
        for (Map.Entry<String, Session> u : sessions.entrySet()) {
          Files.write(Paths.get(args[4], u.getKey() + ".state"), u.getValue().toBytes());
          Files.write(Paths.get(args[4], u.getKey() + ".signed"), u.getValue().toBytes(key));
          u.getValue().close();
        }
      }
    } else if (mode.equals("resume")) {  // STATE KEYHEX|- ITEMS OUT SAVE: restore, observe + top-10 per item
      try (Recommender rec = Recommender.open(bundle);
           Session s = rec.restore(Files.readAllBytes(Paths.get(args[2])), hex(args[3]));
           PrintWriter out = new PrintWriter(Files.newBufferedWriter(Paths.get(args[5])))) {
        out.println(s.observed() + "\t" + line(s.recommend(10)));
        for (String[] e : events(args[4])) {
          s.observe(e[0]);
          out.println(s.observed() + "\t" + line(s.recommend(10)));
        }
        Files.write(Paths.get(args[6]), s.toBytes());
      }
    } else if (mode.equals("items")) {  // KNOWN-ID NEW-ID VALUES(comma): addItems, itemVector, itemCount, top-10
      try (Recommender rec = Recommender.open(bundle); Session s = rec.newSession()) {
        String[] values = args[4].split(",");
        int half = values.length / 2;
        float[][] vectors = new float[2][half];
        for (int i = 0; i < values.length; i++) vectors[i / half][i % half] = Float.parseFloat(values[i]);
        int added = rec.addItems(new String[] {args[3], args[3] + "-b"}, vectors);
        System.out.println(added + "\t" + rec.itemCount() + "\t" + Arrays.toString(rec.itemVector(args[2])) + "\t"
                           + Arrays.toString(rec.itemVector(args[3])));
        s.observe(args[2]);
        s.observe(args[3]);
        System.out.println(line(s.recommend(10)));
      }
    } else if (mode.equals("errors")) {  // MISSING CORRUPT SIGNED KEYHEX ITEM
      PrintStream out = System.out;
      byte[] corrupt = Files.readAllBytes(Paths.get(args[3])), signed = Files.readAllBytes(Paths.get(args[4]));
      byte[] key = hex(args[5]);
      String item = args[6];
      expect(out, "missing", () -> Recommender.open(args[2]).close());
      expect(out, "null-path", () -> Recommender.open((String) null));
      Recommender rec = Recommender.open(bundle);
      expect(out, "corrupt", () -> rec.restore(corrupt));
      expect(out, "truncated", () -> rec.restore(Arrays.copyOf(signed, 10)));
      expect(out, "signed-no-key", () -> rec.restore(signed));
      expect(out, "signed-wrong-key", () -> rec.restore(signed, "another-key-of-the-app".getBytes("UTF-8")));
      expect(out, "signed-key", () -> rec.restore(signed, key).close());
      expect(out, "short-key", () -> rec.newSession().toBytes(new byte[4]));
      expect(out, "k0", () -> rec.newSession().recommend(0));
      expect(out, "kbig", () -> rec.newSession().recommend(Integer.MAX_VALUE));
      expect(out, "unknown-vector", () -> rec.itemVector("no-such-item"));
      expect(out, "unknown-observe", () -> { if (rec.newSession().observe("no-such-item")) throw new Exception("advanced"); });
      expect(out, "nul-id", () -> rec.newSession().observe("a\0b"));
      expect(out, "ragged", () -> rec.addItems(new String[] {"x", "y"}, new float[][] {new float[16], new float[3]}));
      expect(out, "short-vectors", () -> rec.addItems(new String[] {"x"}, new float[][] {new float[2]}));
      expect(out, "export-time-id", () -> rec.addItems(new String[] {item}, new float[][] {new float[rec.granularity()]}));
      float[][] two = new float[2][rec.granularity()];
      expect(out, "nul-path", () -> Recommender.open(bundle + "\0x"));
      expect(out, "nul-add", () -> rec.addItems(new String[] {"fine", "i\0" + "1"}, two));
      expect(out, "long-add", () -> rec.addItems(new String[] {"fine", "a".repeat(1025)}, two));
      expect(out, "long-observe", () -> rec.newSession().observe("\u20ac".repeat(342)));
      expect(out, "empty-observe", () -> rec.newSession().observe(""));
      out.println("added\t" + (rec.itemCount() - rec.numItems()) + "\t-\t-");
      Session live = rec.newSession();
      live.observe(item);
      Session closed = rec.newSession();
      closed.close();
      closed.close();
      expect(out, "session-closed-observe", () -> closed.observe(item));
      expect(out, "session-closed-recommend", () -> closed.recommend(10));
      expect(out, "session-closed-bytes", () -> closed.toBytes());
      // a thread recommending while the recommender closes: it ends with IllegalStateException, no crash
      AtomicReference<String> seen = new AtomicReference<>("none");
      Thread racer = new Thread(() -> {
        try (Session s = rec.newSession()) {
          for (int i = 0; ; i++) {
            s.observe(item);
            s.recommend(10);
          }
        } catch (Exception e) {
          seen.set(e.getClass().getSimpleName() + ": " + e.getMessage());
        }
      });
      racer.start();
      Thread.sleep(300);
      rec.close();
      racer.join();
      out.println("race\t" + seen.get() + "\t-\t-");
      rec.close();
      expect(out, "rec-closed-granularity", () -> rec.granularity());
      expect(out, "rec-closed-new-session", () -> rec.newSession());
      expect(out, "rec-closed-restore", () -> rec.restore(corrupt));
      expect(out, "rec-closed-vector", () -> rec.itemVector(item));
      expect(out, "rec-closed-session-observe", () -> live.observe(item));
      expect(out, "rec-closed-session-recommend", () -> live.recommend(10));
      live.close();
      live.close();
      out.println("closed\t" + rec.isClosed() + "\t-\t-");
    } else if (mode.equals("opens")) {  // FMRLB PADDED ALIGNED-OFFSET UNALIGNED-PADDED UNALIGNED-OFFSET ITEMS
      Path file = Paths.get(args[2]);
      long length = Files.size(file);
      byte[] bytes = Files.readAllBytes(file);
      List<String[]> items = events(args[7]);
      java.lang.reflect.Field fdField = FileDescriptor.class.getDeclaredField("fd");  // Android: getFd()
      fdField.setAccessible(true);
      Map<String, Recommender> variants = new LinkedHashMap<>();
      variants.put("dir", Recommender.open(bundle));
      variants.put("file", Recommender.open(args[2]));
      for (String[] padded : new String[][] {{"fd-aligned", args[3], args[4]}, {"fd-unaligned", args[5], args[6]}}) {
        try (RandomAccessFile raf = new RandomAccessFile(padded[1], "r")) {
          variants.put(padded[0], Recommender.openFd(fdField.getInt(raf.getFD()), Long.parseLong(padded[2]), length));
        }
      }
      byte[] scratch = bytes.clone();
      variants.put("bytes", Recommender.open(scratch));
      Arrays.fill(scratch, (byte) 0);  // the recommender has its own copy
      java.nio.ByteBuffer direct = java.nio.ByteBuffer.allocateDirect(bytes.length);
      direct.put(bytes).flip();
      variants.put("direct", Recommender.open(direct));
      try (java.nio.channels.FileChannel channel = java.nio.channels.FileChannel.open(file)) {
        variants.put("mapped", Recommender.open(channel.map(java.nio.channels.FileChannel.MapMode.READ_ONLY, 0, length)));
      }
      java.nio.ByteBuffer heap = java.nio.ByteBuffer.allocate(bytes.length + 7);
      heap.position(7);
      heap.put(bytes).position(7);
      variants.put("heap", Recommender.open(heap));
      for (Map.Entry<String, Recommender> v : variants.entrySet()) {
        StringBuilder out = new StringBuilder(v.getKey());
        try (Recommender rec = v.getValue(); Session s = rec.newSession()) {
          for (String[] item : items) {
            s.observe(item[0]);
            out.append('\t').append(line(s.recommend(10)).replace('\t', ' '));
          }
        }
        System.out.println(out);
      }
      try (RandomAccessFile raf = new RandomAccessFile(args[3], "r")) {
        int fd = fdField.getInt(raf.getFD());
        expect(System.out, "fd-outside", () -> Recommender.openFd(fd, Long.parseLong(args[4]) + 1, length));
      }
      expect(System.out, "bytes-garbage", () -> Recommender.open(new byte[100]));
      expect(System.out, "bytes-truncated", () -> Recommender.open(Arrays.copyOf(bytes, bytes.length - 1)));
    } else if (mode.equals("stress")) {  // ITEMS CALLS: observe + recommend CALLS times on one session
      List<String[]> items = events(args[2]);
      int calls = Integer.parseInt(args[3]);
      try (Recommender rec = Recommender.open(bundle); Session s = rec.newSession()) {
        for (int i = 0; i < 2000; i++) {  // warm up (JIT, allocator)
          s.observe(items.get(i % items.size())[0]);
          s.recommend(10);
        }
        System.gc();
        long before = rssKb(), start = System.nanoTime();
        for (int i = 0; i < calls; i++) {
          s.observe(items.get(i % items.size())[0]);
          Recommendations top = s.recommend(10);
          if (top.size() != 10) throw new AssertionError("size " + top.size());
        }
        long seconds = System.nanoTime() - start;
        long afterLoop = rssKb();
        for (int i = 0; i < calls / 10; i++) {  // the other natives that make objects
          try (Session r = rec.restore(s.toBytes(), null)) {
            r.recommend(10, true);
          }
          rec.itemVector(items.get(i % items.size())[0]);
        }
        System.gc();
        System.out.println("rss_kb_before\t" + before + "\nrss_kb_after_loop\t" + afterLoop + "\nrss_kb_after\t"
                           + rssKb() + "\nus_per_observe_recommend\t" + (seconds / 1000.0 / calls) + "\nobserved\t"
                           + s.observed());
      }
    }
  }
}
"""


@pytest.fixture(scope="session")
def jni_build(jni_runtime, tmp_path_factory):
    """conftest's jni_runtime (test_cpp_runtime's build with -DFMRL_WITH_JNI=ON), plus the compiled driver."""
    javac, java, jar = jni_runtime["javac"], jni_runtime["java"], jni_runtime["jar"]
    classes = tmp_path_factory.mktemp("fmrl-jni-driver")
    (classes / "FmrlJniDriver.java").write_text(DRIVER)
    compiled = subprocess.run([javac, "-Xlint:all", "-Werror", "-cp", str(jar), "-d", str(classes),
                               str(classes / "FmrlJniDriver.java")], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return {"java": java, "build": jni_runtime["build"], "classpath": f"{jar}:{classes}"}


def run_java(jni: dict, *args, extra: tuple = ()) -> subprocess.CompletedProcess:
    """The driver under -Xcheck:jni; fails on a crash and on any JNI warning in its output."""
    result = subprocess.run([jni["java"], "-Xcheck:jni", f"-Djava.library.path={jni['build']}", *extra,
                             "-cp", jni["classpath"], "FmrlJniDriver", *map(str, args)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "WARNING" not in output and "FATAL ERROR" not in output, output
    return result


def parse_top(ids: str, scores: str) -> tuple[list[str], list[float]]:
    """Java's Float.toString identifies a float32, not a float64: parse the text back to float32."""
    return (ids.split(",") if ids else []), ([float(np.float32(s)) for s in scores.split(",")] if scores else [])


def assert_same_top(java_ids, java_scores, python_top) -> None:
    assert java_ids == [i for i, _ in python_top]
    np.testing.assert_allclose(java_scores, [s for _, s in python_top], rtol=0, atol=1e-6)


def demo_events(dataset, tmp_path: Path, users: int = 30, events: int = 300) -> list[tuple[str, str]]:
    stream = tmp_path / "stream.jsonl"
    make_stream(stream, dataset, users=users)
    lines = [json.loads(line) for line in open(stream)][:events]
    assert len(lines) == events and len({e["user"] for e in lines}) > 10
    return [(e["user"], e["item"]) for e in lines]


def test_java_matches_python_on_a_stream_and_states_cross_over(art, rec, dataset, jni_build, tmp_path):
    events = demo_events(dataset, tmp_path)
    (tmp_path / "events.tsv").write_text("".join(f"{u}\t{i}\n" for u, i in events))
    saved = tmp_path / "saved"
    saved.mkdir()
    run_java(jni_build, "replay", art.bundle, tmp_path / "events.tsv", tmp_path / "java.tsv", saved, KEY.hex())
    header, *rows = (tmp_path / "java.tsv").read_text().splitlines()
    import fmrl_sdk

    assert header.split("\t") == [fmrl_sdk.__version__, str(rec.granularity), str(rec.k_max), str(rec.num_items),
                                  str(rec.state_bytes)]
    assert len(rows) == len(events)
    sessions = {}
    for (user, item), row in zip(events, rows):
        advanced, ids, scores, unseen_ids, unseen_scores = row.split("\t")
        session = sessions.setdefault(user, rec.new_session())
        session.observe(item)
        assert advanced == "true"
        assert_same_top(*parse_top(ids, scores), session.recommend(10, exclude_seen=False))
        assert_same_top(*parse_top(unseen_ids, unseen_scores), session.recommend(10, exclude_seen=True))
    # Java -> Python: the same bytes after the same events, restorable (signed with the key too)
    for user, session in sessions.items():
        blob, signed = (saved / f"{user}.state").read_bytes(), (saved / f"{user}.signed").read_bytes()
        assert blob == session.to_bytes() and signed == session.to_bytes(key=KEY), user
        restored = rec.restore(signed, key=KEY)
        assert restored.observed == session.observed
        assert restored.recommend(10) == session.recommend(10)
        with pytest.raises(FmrlError):
            rec.restore(signed)


@pytest.mark.parametrize("signed", [False, True])
def test_python_state_restores_in_java(art, rec, dataset, jni_build, tmp_path, signed):
    items = [dataset.item_ids[i - 1] for i in dataset.sequences[7].tolist()]
    half = len(items) // 2
    session = rec.new_session()
    for item in items[:half]:
        session.observe(item)
    (tmp_path / "user.state").write_bytes(session.to_bytes(key=KEY) if signed else session.to_bytes())
    (tmp_path / "rest.tsv").write_text("".join(f"{item}\n" for item in items[half:]))
    run_java(jni_build, "resume", art.bundle, tmp_path / "user.state", KEY.hex() if signed else "-",
             tmp_path / "rest.tsv", tmp_path / "java.tsv", tmp_path / "after.state")
    rows = (tmp_path / "java.tsv").read_text().splitlines()
    assert len(rows) == len(items) - half + 1
    for n, row in enumerate(rows):
        observed, ids, scores = row.split("\t")
        if n:
            session.observe(items[half + n - 1])
        assert int(observed) == session.observed
        assert_same_top(*parse_top(ids, scores), session.recommend(10))
    assert (tmp_path / "after.state").read_bytes() == session.to_bytes()


def test_added_items_and_vectors_match_python(art, dataset, jni_build, tmp_path):
    fresh = Recommender.open(art.bundle)
    size = fresh.granularity
    hidden = fresh.new_session().hidden
    vectors = (np.random.default_rng(1).normal(size=(2, size)) + 3 * hidden / np.linalg.norm(hidden)).astype(np.float32)
    known = dataset.item_ids[4]
    out = run_java(jni_build, "items", art.bundle, known, "new-a", ",".join(repr(float(v)) for v in vectors.ravel()))
    first, top = out.stdout.strip().splitlines()[-2:]
    added, count, known_vector, new_vector = first.split("\t")
    assert fresh.add_items(["new-a", "new-a-b"], vectors) == int(added) == 2
    assert int(count) == fresh.num_items + 2
    np.testing.assert_array_equal(np.float32(json.loads(known_vector)), fresh.item_vector(known))
    np.testing.assert_array_equal(np.float32(json.loads(new_vector)), vectors[0])
    session = fresh.new_session()
    session.observe(known)
    session.observe("new-a")
    assert_same_top(*parse_top(*top.split("\t")), session.recommend(10))
    fresh.close()


def test_one_file_bundle_from_path_fd_bytes_and_buffers(art, dataset, jni_build, tmp_path):
    """open(.fmrlb path), openFd (aligned: in place, unaligned: one copy), open(byte[]) (own copy: the
    array is zeroed afterwards), open(direct / mapped / heap ByteBuffer): all the same top-10 as Python."""
    fmrlb = art.bundle.parent / (art.bundle.name + ".fmrlb")
    assert fmrlb.exists(), "export_bundle (format both) writes NAME.fmrlb beside the bundle directory"
    data = fmrlb.read_bytes()
    (tmp_path / "aligned.bin").write_bytes(b"\x5a" * 4096 + data + b"tail")
    (tmp_path / "unaligned.bin").write_bytes(b"\x5a" * 100 + data + b"tail")
    items = [dataset.item_ids[i - 1] for i in dataset.sequences[11].tolist()][:8]
    (tmp_path / "items.tsv").write_text("".join(f"{item}\n" for item in items))
    out = run_java(jni_build, "opens", art.bundle, fmrlb, tmp_path / "aligned.bin", 4096, tmp_path / "unaligned.bin",
                   100, tmp_path / "items.tsv", extra=("--add-opens", "java.base/java.io=ALL-UNNAMED"))
    lines = out.stdout.splitlines()
    rec = Recommender.open(fmrlb)
    session = rec.new_session()
    want = []
    for item in items:
        session.observe(item)
        want.append(session.recommend(10))
    variants = [line.split("\t") for line in lines if line.split("\t")[0] in
                ("dir", "file", "fd-aligned", "fd-unaligned", "bytes", "direct", "mapped", "heap")]
    assert [v[0] for v in variants] == ["dir", "file", "fd-aligned", "fd-unaligned", "bytes", "direct", "mapped", "heap"]
    for variant in variants:
        assert len(variant) == len(items) + 1, variant[0]
        for got, top in zip(variant[1:], want):
            assert_same_top(*parse_top(*got.split(" ")), top)
    errors = {line.split("\t")[0]: line.split("\t")[1:] for line in lines if line.count("\t") == 3}
    for name in ("fd-outside", "bytes-garbage", "bytes-truncated"):
        assert errors[name][:2] == ["FmrlException", "2/BUNDLE"] and errors[name][2], (name, errors[name])
    rec.close()


def test_errors_are_exceptions_with_the_library_message(art, rec, dataset, jni_build, tmp_path):
    session = rec.new_session()
    for i in dataset.sequences[1].tolist()[:4]:
        session.observe_index(i)
    corrupt = bytearray(session.to_bytes())
    corrupt[100] ^= 1
    (tmp_path / "corrupt.state").write_bytes(bytes(corrupt))
    (tmp_path / "signed.state").write_bytes(session.to_bytes(key=KEY))
    missing = tmp_path / "no-such-bundle"
    out = run_java(jni_build, "errors", art.bundle, missing, tmp_path / "corrupt.state", tmp_path / "signed.state",
                   KEY.hex(), dataset.item_ids[0])
    cases = {}
    for line in out.stdout.splitlines():
        name, kind, code, message = line.split("\t", 3)
        cases[name] = (kind, code, message)

    def python_message(call) -> str:
        with pytest.raises(FmrlError) as error:
            call()
        return str(error.value)

    assert cases["missing"] == ("FmrlException", "2/BUNDLE", python_message(lambda: Recommender.open(missing)))
    assert cases["corrupt"] == ("FmrlException", "3/STATE", python_message(lambda: rec.restore(bytes(corrupt))))
    signed = (tmp_path / "signed.state").read_bytes()
    assert cases["truncated"] == ("FmrlException", "3/STATE", python_message(lambda: rec.restore(signed[:10])))
    assert cases["signed-no-key"] == ("FmrlException", "3/STATE", python_message(lambda: rec.restore(signed)))
    assert cases["signed-wrong-key"] == ("FmrlException", "3/STATE",
                                         python_message(lambda: rec.restore(signed, key=b"another-key-of-the-app")))
    assert cases["signed-key"][0] == "none"
    for name in ("short-key", "k0", "kbig", "short-vectors", "export-time-id"):
        assert cases[name][:2] == ("FmrlException", "1/ARGUMENT") and cases[name][2], (name, cases[name])
    assert "k must be in [1, " in cases["kbig"][2] and "got 2147483647" in cases["kbig"][2]
    assert cases["unknown-vector"][:2] == ("FmrlException", "4/UNKNOWN_ITEM") and "no-such-item" in \
        cases["unknown-vector"][2]
    assert cases["unknown-observe"][0] == "none"  # skipped (on_unknown = skip), returns false
    assert cases["nul-id"][:2] == ("IllegalArgumentException", "-") and "NUL" in cases["nul-id"][2]
    assert cases["nul-path"] == ("IllegalArgumentException", "-", "path contains a NUL character")
    assert cases["nul-add"] == ("IllegalArgumentException", "-", "ids[1] contains a NUL character")
    fresh = Recommender.open(art.bundle)
    two = np.zeros((2, rec.granularity))
    assert cases["long-add"] == ("FmrlException", "1/ARGUMENT",
                                 python_message(lambda: fresh.add_items(["fine", "a" * 1025], two)))
    assert cases["long-observe"] == ("FmrlException", "1/ARGUMENT",
                                     python_message(lambda: fresh.new_session().observe("\u20ac" * 342)))
    assert cases["empty-observe"] == ("FmrlException", "1/ARGUMENT",
                                      python_message(lambda: fresh.new_session().observe("")))
    assert cases["added"][0] == "0" and fresh.item_ids == rec.item_ids
    assert cases["ragged"][:2] == ("IllegalArgumentException", "-")
    assert cases["null-path"][:2] == ("NullPointerException", "-")
    for name in ("session-closed-observe", "session-closed-recommend", "session-closed-bytes"):
        assert cases[name] == ("IllegalStateException", "-", "Session is closed"), name
    assert cases["race"][0] == "IllegalStateException: Recommender is closed"
    for name in ("rec-closed-granularity", "rec-closed-new-session", "rec-closed-restore", "rec-closed-vector",
                 "rec-closed-session-observe", "rec-closed-session-recommend"):
        assert cases[name] == ("IllegalStateException", "-", "Recommender is closed"), name
    assert cases["closed"][0] == "true"


def test_no_local_reference_leak_over_100k_calls(art, dataset, jni_build, tmp_path, capsys):
    items = [dataset.item_ids[i - 1] for seq in dataset.sequences[:50] for i in seq.tolist()]
    (tmp_path / "items.tsv").write_text("".join(f"{item}\n" for item in items))
    out = run_java(jni_build, "stress", art.bundle, tmp_path / "items.tsv", STRESS_CALLS,
                   extra=("-Xms64m", "-Xmx64m", "-XX:+AlwaysPreTouch"))
    numbers = dict(line.split("\t") for line in out.stdout.strip().splitlines())
    assert int(numbers["observed"]) == STRESS_CALLS + 2000
    before, after_loop, after = (int(numbers[k]) for k in ("rss_kb_before", "rss_kb_after_loop", "rss_kb_after"))
    with capsys.disabled():
        print(f"\n[jni] {STRESS_CALLS:,} observe+recommend under -Xcheck:jni: RSS {before} KiB before, {after_loop} "
              f"KiB after, {after} KiB after {STRESS_CALLS // 10:,} restore/toBytes/itemVector more; "
              f"{float(numbers['us_per_observe_recommend']):.1f} us per observe+recommend")
    assert after_loop - before < 8 * 1024, numbers  # a leak of 1 local ref or 1 state per call would show
