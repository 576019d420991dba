import dev.fmrl.FmrlException;
import dev.fmrl.Recommendations;
import dev.fmrl.Recommender;
import dev.fmrl.Session;
import java.io.FileDescriptor;
import java.io.RandomAccessFile;
import java.lang.reflect.Field;
import java.nio.file.Files;
import java.nio.file.Paths;

/**
 * The fmrl runtime from Java: open a bundle, replay a user's events, print the top-10 not yet seen (one
 * "id<TAB>score" a line; the other lines start with '#'), save the session's bytes and restore them.
 *
 *   java -Djava.library.path=build/fmrl -cp build/fmrl/fmrl.jar:. Main [--open path|fd|buffer] [--offset N]
 *        [--length N] BUNDLE ITEM [ITEM...]
 *
 * path (the default): BUNDLE is a directory or NAME.fmrlb. fd and buffer: a one-file bundle at bytes
 * [offset, offset + length) of the file BUNDLE (default: all of it), as an APK stores an asset; fd maps it
 * from an open descriptor, buffer reads it into a byte[] first.
 */
public final class Main {
  public static void main(String[] args) throws Exception {
    String how = "path";
    long offset = 0, length = -1;  // -1: to the end of the file
    int a = 0;
    for (; a + 1 < args.length && args[a].startsWith("--"); a += 2) {
      if (args[a].equals("--open")) how = args[a + 1];
      else if (args[a].equals("--offset")) offset = Long.parseLong(args[a + 1]);
      else if (args[a].equals("--length")) length = Long.parseLong(args[a + 1]);
      else a = args.length;  // unknown option: usage
    }
    if (args.length - a < 2 || !(how.equals("path") || how.equals("fd") || how.equals("buffer"))) {
      System.err.println("usage: Main [--open path|fd|buffer] [--offset N] [--length N] BUNDLE ITEM [ITEM...]");
      System.exit(2);
    }
    if (length < 0) length = Files.size(Paths.get(args[a])) - offset;
    try (Recommender rec = open(how, args[a], offset, length); Session session = rec.newSession()) {
      System.out.printf("# fmrl_runtime %s: %d items, s = %d, k_max = %d, %d state bytes%n", Recommender.version(),
                        rec.numItems(), rec.granularity(), rec.kMax(), rec.stateBytes());
      for (int i = a + 1; i < args.length; i++) {
        if (!session.observe(args[i])) System.out.println("# " + args[i] + ": unknown item, skipped");
      }
      Recommendations top = session.recommend(10, true);  // the best 10 not seen yet
      for (int r = 0; r < top.size(); r++) System.out.printf("%s\t%.6f%n", top.id(r), top.score(r));
      byte[] saved = session.toBytes();  // what onPause would store; Python's Session.to_bytes() format
      try (Session again = rec.restore(saved)) {
        System.out.println("# restored: " + again.observed() + " events, same top-10: "
                           + again.recommend(10, true).equals(top));
      }
    } catch (FmrlException e) {
      System.err.println("error (" + e.status() + "): " + e.getMessage());
      System.exit(1);
    }
  }

  static Recommender open(String how, String file, long offset, long length) throws Exception {
    if (how.equals("path")) return Recommender.open(file);
    try (RandomAccessFile raf = new RandomAccessFile(file, "r")) {  // closed once open returns: nothing keeps it
      if (how.equals("buffer")) {
        byte[] bytes = new byte[Math.toIntExact(length)];
        raf.seek(offset);
        raf.readFully(bytes);
        return Recommender.open(bytes);  // the library copies the bytes: the array may go
      }
      // Android: AssetFileDescriptor afd = getAssets().openFd("NAME.fmrlb") (stored uncompressed), then
      // openFd(afd.getParcelFileDescriptor().getFd(), afd.getStartOffset(), afd.getLength()).
      // A desktop JVM hides the number: run java with --add-opens java.base/java.io=ALL-UNNAMED.
      Field fd = FileDescriptor.class.getDeclaredField("fd");
      fd.setAccessible(true);
      return Recommender.openFd(fd.getInt(raf.getFD()), offset, length);
    }
  }
}
